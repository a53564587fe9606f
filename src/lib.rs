//! t8k-engine: takes TractStack trigger files and runs each job through an operator-editable Rhai script.
