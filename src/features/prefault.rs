//! Fresh arena memory mapped in bulk ahead of use.
//!
//! A restore writes every user's cells once into arenas that grow to a gigabyte for a million
//! users, and the first write to each 4 kB page is a page fault: a trap into the kernel per
//! page, about a third of a restore's applying thread (perf, 1M users). Asking the kernel to map
//! the next stretch of the arena's spare capacity at once (`MADV_POPULATE_WRITE`, Linux 5.14)
//! does the same work without a trap per page. Only a bounded stretch beyond the used part is
//! mapped, so resident memory grows by at most [`AHEAD_BYTES`] per arena over what is used.
//!
//! Where the call is not supported (another OS, an older kernel), nothing is done and the pages
//! fault in as before.

/// How far beyond the used part of an arena to map.
pub const AHEAD_BYTES: usize = 2 << 20;
const PAGE: usize = 4096;

/// What is already mapped ahead of one arena.
#[derive(Debug, Default, Clone)]
pub struct Ahead {
    /// The arena's buffer when last mapped ahead (a reallocation moves it).
    base: usize,
    /// Bytes from `base` known to be mapped.
    mapped: usize,
    /// The kernel refused once: do not ask again.
    off: bool,
}

impl Ahead {
    /// After `v` grew: if its used part comes within half a stretch of what is mapped, map the
    /// next stretch of its spare capacity.
    #[inline]
    pub fn grew<T>(&mut self, v: &Vec<T>) {
        let used = std::mem::size_of_val(v.as_slice());
        let base = v.as_ptr() as usize;
        if base != self.base {
            // Moved (or first use): what was written so far is mapped, the rest is not known.
            self.base = base;
            self.mapped = used;
        }
        if self.off || used + AHEAD_BYTES / 2 <= self.mapped {
            return;
        }
        let cap = v.capacity() * std::mem::size_of::<T>();
        let end = (used + AHEAD_BYTES).min(cap);
        // Whole pages inside the allocation only: the first partial page is already touched
        // (or belongs to the allocator's header), the last one may be shared with nothing else
        // but need not be mapped now.
        let start = (base + self.mapped.max(used)).next_multiple_of(PAGE);
        let stop = (base + end) / PAGE * PAGE;
        if stop > start {
            self.off = !populate_write(start, stop - start);
        }
        self.mapped = end;
    }
}

/// Map `len` bytes at `addr` (page-aligned) for writing. `false`: not supported here.
#[cfg(target_os = "linux")]
fn populate_write(addr: usize, len: usize) -> bool {
    // SAFETY: the range lies inside a live allocation's spare capacity (see `Ahead::grew`);
    // populating changes no byte of it, only whether its pages are mapped yet.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn populate_write(_addr: usize, _len: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_growing_arena_keeps_its_contents_and_is_mapped_at_most_a_stretch_ahead() {
        let mut v: Vec<u32> = Vec::new();
        let mut ahead = Ahead::default();
        for i in 0..3_000_000u32 {
            v.push(i);
            ahead.grew(&v);
            let used = v.len() * 4;
            assert!(ahead.mapped <= used + AHEAD_BYTES, "mapped {} for {used} used", ahead.mapped);
            assert!(ahead.mapped >= used, "the used part is counted as mapped");
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32), "the contents are untouched");
    }

    /// Whether each page of `[addr, addr + len)` is resident, by `mincore`.
    fn resident(addr: usize, len: usize) -> Vec<bool> {
        let mut out = vec![0u8; len.div_ceil(PAGE)];
        // SAFETY: a page-aligned range of this process's memory; `out` has a byte per page.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, out.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore");
        out.iter().map(|b| b & 1 == 1).collect()
    }

    #[test]
    fn the_stretch_ahead_of_the_used_part_is_resident_before_it_is_written() {
        // Large enough that the allocator maps it fresh: nothing of it is resident yet.
        let mut v: Vec<u8> = Vec::with_capacity(64 << 20);
        v.push(1);
        let mut ahead = Ahead::default();
        ahead.grew(&v);
        assert!(!ahead.off, "MADV_POPULATE_WRITE is refused by this kernel");
        let base = v.as_ptr() as usize;
        let from = (base + PAGE).next_multiple_of(PAGE);
        let ahead_pages = resident(from, base + AHEAD_BYTES - PAGE - from);
        assert!(ahead_pages.iter().all(|&r| r), "every page of the stretch ahead is mapped");
        let beyond = (base + AHEAD_BYTES + PAGE).next_multiple_of(PAGE);
        assert!(resident(beyond, 16 * PAGE).iter().all(|&r| !r), "nothing beyond the stretch is mapped");
    }
}
