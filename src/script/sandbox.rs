//! Owns the sandbox a script runs in: one engine per job with the standard package, the limits (operations,
//! depth, sizes, memory, the job's deadline) and the host functions bound to that job, and the big-stack
//! thread scripts run on; it decides nothing about which script or function runs.

use std::sync::{Arc, Mutex, Weak};

use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine, Module};

use super::{Job, JobCtx, JobError, Rendered, Scripts, host, sources};

/// The standard package's functions, shared by the engines alive at one time (a job's, its `parallel`
/// branches', a trigger's dry engine) and freed with the last of them: an idle daemon holds no script
/// machinery (about 0.5 MiB of heap), and building it again costs a job ~170 µs.
static PACKAGE: Mutex<Weak<Module>> = Mutex::new(Weak::new());

fn standard_package() -> Arc<Module> {
    let mut held = PACKAGE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(module) = held.upgrade() {
        return module;
    }
    let module = StandardPackage::new().as_shared_module();
    *held = Arc::downgrade(&module);
    module
}

/// How much a script may grow the engine's resident memory. Rhai's size limits do not see values that
/// closures capture, values stored by index assignment, or one large string in each of many variables;
/// this backstop does, before the machine runs out of memory.
pub const MAX_SCRIPT_MEMORY: u64 = 128 << 20;

/// Stack of the threads that run scripts (a job's and each `parallel` branch's). Cloning, printing and
/// dropping a value recurse once per level of nesting, and the levels a script can build are bounded
/// only by MAX_SCRIPT_MEMORY when it chains closures (`f = || g` in a loop). Measured: a level holds
/// about 170 bytes of heap and takes about 250 bytes of stack to drop in a release build (500 in a
/// debug one), so a chain grown to the memory limit needs 190 MiB (380 MiB). The 2 MiB of a default
/// thread (8 MiB on the main one) overflowed at a few thousand levels, and a stack overflow aborts the
/// whole engine. It is address space, touched only as deep as a script goes.
pub const SCRIPT_STACK: usize = 4 * MAX_SCRIPT_MEMORY as usize;

/// Builds a sandboxed engine whose host functions act for one job.
pub fn new_engine(scripts: &Scripts, ctx: &Arc<JobCtx>) -> Engine {
    let mut e = Engine::new_raw();
    StandardPackage::init_engine(&mut e);
    e.register_global_module(standard_package());
    e.set_max_strings_interned(1024);
    e.disable_symbol("eval");
    e.set_module_resolver(sources::Resolver::new(scripts.clone()));
    e.set_strict_variables(true);
    e.set_fail_on_invalid_map_property(true);
    // Backstops only: the job's wall-clock deadline is the real limit.
    e.set_max_operations(500_000_000);
    e.set_max_call_levels(48);
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(4 << 20);
    e.set_max_array_size(10_000);
    e.set_max_map_size(10_000);
    e.set_max_variables(1_000);
    e.set_max_functions(500);
    e.set_max_modules(32);
    let c = ctx.clone();
    let memory = MemoryWatch::new();
    e.on_progress(move |ops| {
        if ops % 256 == 0 {
            c.stop_reason()
                .or_else(|| memory.check())
                .map(Dynamic::from)
        } else {
            None
        }
    });
    e.on_print(|s| tracing::info!(target: "t8k::script", "{s}"));
    e.on_debug(|s, _, _| tracing::debug!(target: "t8k::script", "{s}"));
    e.build_type::<Job>();
    host::register(&mut e, ctx);
    e
}

/// Watches the engine's resident memory while a script runs (see MAX_SCRIPT_MEMORY).
struct MemoryWatch {
    base: u64,
    started: std::time::Instant,
    /// Milliseconds after `started` of the next look: reading /proc costs microseconds, operations nanoseconds.
    next: std::sync::atomic::AtomicU64,
}

impl MemoryWatch {
    fn new() -> Self {
        MemoryWatch {
            base: resident_bytes().unwrap_or(0),
            started: std::time::Instant::now(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Why the script must stop, when it has grown the engine by more than its share.
    fn check(&self) -> Option<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.started.elapsed().as_millis() as u64;
        if now < self.next.load(Relaxed) {
            return None;
        }
        self.next.store(now + 5, Relaxed);
        let grown = resident_bytes()?.saturating_sub(self.base);
        (grown > MAX_SCRIPT_MEMORY).then(|| {
            format!(
                "the script grew the engine's memory by {} MiB, over its limit of {} MiB: something keeps growing (an array, a map, closures made in a loop); fix the script",
                grown >> 20,
                MAX_SCRIPT_MEMORY >> 20
            )
        })
    }
}

/// The engine's resident set size (`/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// Runs `f` on a thread with SCRIPT_STACK, inside the caller's tracing span. A panic in a host function
/// becomes an error of the job instead of taking the engine down.
pub fn on_script_thread<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("script".into())
            .stack_size(SCRIPT_STACK)
            .spawn_scoped(s, move || {
                let _entered = span.enter();
                f()
            })
            .map_err(|e| format!("cannot start a thread to run the script: {e}"))?;
        thread.join().map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("the engine panicked while running the script ({what}); this is a bug in t8k-engine, please report it")
        })
    })
}

/// A failure of the thread that runs a script, as a job error.
pub(super) fn thread_error(origin: &str, message: String) -> JobError {
    JobError::Runtime(Rendered {
        headline: format!("{origin}: {message}"),
        details: format!("{origin}: {message}"),
        terminated: false,
        rolled_back: false,
    })
}
