//! Asking the CPU to fetch memory a loop will read soon.
//!
//! A timer pass scores users spread over arenas far larger than the caches, in index order but
//! with gaps the hardware prefetcher cannot follow: the first read of each user's cells was about
//! a third of building their vector (perf, `replay` of the simulator's 5.4M events). Asking for a
//! user's cells while the previous users are scored overlaps those misses with useful work.
//! A prefetch is only a hint: it never faults and changes no result.

const LINE: usize = 64;

/// Prefetch every cache line of `cells` into all cache levels.
#[inline]
pub fn slice<T>(cells: &[T]) {
    let start = cells.as_ptr() as usize;
    let end = start + std::mem::size_of_val(cells);
    let mut line = start & !(LINE - 1);
    while line < end {
        one(line as *const u8);
        line += LINE;
    }
}

/// Prefetch the cache line holding `p`.
#[inline]
pub fn one<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never dereferences in the language's sense: it cannot
    // fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_any_slice_is_harmless_and_changes_nothing() {
        let v: Vec<u32> = (0..1000).collect();
        slice(&v[3..517]);
        slice(&v[..0]);
        one(std::ptr::null::<u8>());
        assert_eq!(v, (0..1000).collect::<Vec<u32>>());
    }
}
