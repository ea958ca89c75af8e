//! A global allocator that can refuse oversized allocations on one thread
//! while it decodes bytes from a peer.
//!
//! yrs reads element counts from an update and reserves room for them up
//! front (`try_reserve`): a 5-byte update can ask for gigabytes, and when
//! the system grants it, the node spends a fraction of a second touching
//! hundreds of megabytes per entry (found by the `apply_entry` fuzz
//! target). [`with_cap`] runs a decode with a per-allocation ceiling
//! proportional to the input: a fallible reservation above it fails at
//! once, and yrs reports a decode error.
//!
//! The cap applies only where the binary installs [`Capped`] as the global
//! allocator (`main.rs`, the fuzz targets). Elsewhere (in-process tests)
//! [`with_cap`] changes nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// The largest single allocation this thread may make now.
    static CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The system allocator, refusing allocations above the thread's cap.
pub struct Capped;

fn allowed(size: usize) -> bool {
    // `try_with`: the thread-local may be gone while a thread exits.
    size <= CAP.try_with(Cell::get).unwrap_or(usize::MAX)
}

// SAFETY: every call is forwarded to `System` unchanged, or refused with
// a null pointer, which the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !allowed(new_size) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// The per-allocation ceiling for decoding `len` bytes from a peer: far
/// above what decoding a genuine update of that size needs (its strings and
/// blocks are proportional to it), far below what a forged count asks for.
pub fn cap_for(len: usize) -> usize {
    len.saturating_mul(256).saturating_add(1 << 20)
}

/// Runs `f` with this thread's single allocations limited to `cap` bytes.
/// Only for code whose large allocations are fallible (decoders using
/// `try_reserve`): an infallible one above the cap aborts the process.
pub fn with_cap<T>(cap: usize, f: impl FnOnce() -> T) -> T {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CAP.with(|c| c.replace(cap)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_per_thread_and_restored() {
        with_cap(10, || {
            assert!(!allowed(11));
            assert!(allowed(10));
            std::thread::spawn(|| assert!(allowed(1 << 30)))
                .join()
                .unwrap();
        });
        assert!(allowed(1 << 30));
    }
}
