//! Pins shard threads to cores; warns once if it cannot.

use std::sync::atomic::{AtomicBool, Ordering};

pub struct Pinning {
    core_ids: Vec<core_affinity::CoreId>,
    enabled: bool,
    first_core: usize,
    warned: AtomicBool,
}

impl Pinning {
    pub fn new(enabled: bool, first_core: usize) -> Self {
        let core_ids = if enabled {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        Pinning {
            core_ids,
            enabled,
            first_core,
            warned: AtomicBool::new(false),
        }
    }

    /// Pins the calling thread, the `local_index`-th shard of this process.
    pub fn pin(&self, local_index: usize) {
        if !self.enabled {
            return;
        }
        let pinned = !self.core_ids.is_empty()
            && core_affinity::set_for_current(
                self.core_ids[(self.first_core + local_index) % self.core_ids.len()],
            );
        if !pinned && !self.warned.swap(true, Ordering::Relaxed) {
            log::warn!("cannot pin worker threads to cores; running unpinned");
        }
    }
}
