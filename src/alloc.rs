//! The binary's global allocator: mimalloc, asked the way Rust's own `System` allocator asks
//! glibc's `malloc`.
//!
//! A request makes a few dozen short-lived allocations (header maps, buffers, futures), and
//! glibc's arenas cost about a tenth of the gateway's CPU per request in the profile, hence
//! mimalloc. The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, whose fast path
//! covers blocks up to 1 KiB only: a larger buffer (a socket's read buffer, a request body) of a
//! size that is not a power of two then takes mimalloc's over-allocating path, about 250
//! instructions more each, some 700 per judged PUT in callgrind. Here the usual alignments (up to
//! a word, which every mimalloc block has) go to plain `mi_malloc`, and only larger ones to the
//! aligned entry points.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Every mimalloc block is aligned to at least a machine word: the smallest block is one word
/// and every block size is a multiple of it.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (`#[global_allocator]` in `main.rs`).
pub struct Allocator;

// SAFETY: each method forwards to the mimalloc function with the same contract; alignments above
// a word go to the aligned variants, which honour them.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi::mi_malloc(layout.size()) }.cast()
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) }.cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi::mi_zalloc(layout.size()) }.cast()
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) }.cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            unsafe { mi::mi_realloc(ptr.cast::<c_void>(), new_size) }.cast()
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()) }.cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class from one byte to past mimalloc's large objects, at every alignment from
    /// 1 to a page: aligned as asked, writable end to end, zeroed when asked, and a realloc
    /// (growing and shrinking) keeps the bytes and the alignment.
    /// Positions of an `n`-byte block the test writes and reads back: all of a small one, a
    /// sample of a large one, always both ends.
    fn probes(n: usize) -> impl Iterator<Item = usize> {
        (0..n).step_by((n / 512).max(1)).chain([n - 1])
    }

    #[test]
    fn aligned_as_asked_and_contents_kept() {
        let mut sizes: Vec<usize> = (1..=300).collect();
        let mut s = 300;
        while s < 5 << 20 {
            s = s * 5 / 4 + 1;
            sizes.push(s);
        }
        for &size in &sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xA5, size);
                    Allocator.dealloc(p, layout);

                    let mut z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    for i in probes(size) {
                        *z.add(i) = i as u8;
                    }
                    for new_size in [size / 2 + 1, size * 3 + 7] {
                        let r = Allocator.realloc(z, layout, new_size);
                        let what = format!("realloc {size}->{new_size} align {align}");
                        assert_eq!(r as usize % align, 0, "{what}");
                        let kept = size.min(new_size);
                        let kept_ok = probes(size)
                            .filter(|&i| i < kept)
                            .all(|i| *r.add(i) == i as u8);
                        assert!(kept_ok, "{what} kept");
                        // Back to the original size (and contents) for the next round.
                        let grown = Layout::from_size_align(new_size, align).expect("layout");
                        z = Allocator.realloc(r, grown, size);
                        assert_eq!(z as usize % align, 0, "{what} and back");
                        let back_ok = probes(size)
                            .filter(|&i| i < kept)
                            .all(|i| *z.add(i) == i as u8);
                        assert!(back_ok, "{what} and back");
                        for i in probes(size) {
                            *z.add(i) = i as u8;
                        }
                    }
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
