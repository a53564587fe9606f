//! Owns cancellation: a tree of tokens where cancelling one cancels its descendants, each with the first
//! reason given; it never signals a process or stops a thread itself (holders poll it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

#[derive(Default)]
struct Node {
    flag: AtomicBool,
    reason: OnceLock<String>,
    parent: Option<Arc<Node>>,
}

/// A cancellation token; cancelling a parent cancels every child token.
#[derive(Clone, Default)]
pub struct Cancel {
    node: Arc<Node>,
}

impl Cancel {
    /// A fresh, uncancelled root token.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new token that is cancelled when `self` or it is cancelled.
    pub fn child(&self) -> Cancel {
        let node = Node {
            parent: Some(self.node.clone()),
            ..Node::default()
        };
        Cancel {
            node: Arc::new(node),
        }
    }

    /// Cancels this token and its children; the first reason wins, including an ancestor's.
    pub fn cancel(&self, reason: &str) {
        if self.is_cancelled() {
            return;
        }
        // The reason is set before the flag so that anyone who sees the flag also finds a reason.
        let _ = self.node.reason.set(reason.to_string());
        self.node.flag.store(true, Ordering::Release);
    }

    /// Whether this token or any ancestor has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.nodes().any(|n| n.flag.load(Ordering::Acquire))
    }

    /// The reason of this token or of its nearest cancelled ancestor.
    pub fn reason(&self) -> Option<String> {
        self.nodes()
            .find(|n| n.flag.load(Ordering::Acquire))
            .and_then(|n| n.reason.get().cloned())
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::successors(Some(&*self.node), |n| n.parent.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_child_semantics() {
        let parent = Cancel::new();
        let child = parent.child();
        let grandchild = child.child();
        grandchild.cancel("child first");
        assert!(grandchild.is_cancelled() && !child.is_cancelled() && !parent.is_cancelled());
        parent.cancel("parent");
        parent.cancel("ignored");
        assert!(child.is_cancelled());
        assert_eq!(child.reason().as_deref(), Some("parent"));
        assert_eq!(grandchild.reason().as_deref(), Some("child first"));
        let late = child.child();
        late.cancel("too late");
        assert_eq!(late.reason().as_deref(), Some("parent"));
    }
}
