//! A process-wide record of the first panic, so the cluster supervisor sees a
//! panic in any thread — shard, reader, output, relay, network — and fails
//! the run instead of waiting on a thread that is gone.

use std::sync::OnceLock;

static FIRST_PANIC: OnceLock<String> = OnceLock::new();

/// Keeps the default report on stderr and records the first panic.
pub fn install_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let _ = FIRST_PANIC.set(format!(
            "thread {name} panicked: {}",
            verity_core::runtime::panic_message(info.payload())
        ));
    }));
}

/// The first panic of this process, if any thread panicked.
pub fn first_panic() -> Option<String> {
    FIRST_PANIC.get().cloned()
}
