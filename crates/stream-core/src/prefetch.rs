//! Cache prefetch hints. Walking many documents is bound by memory latency rather than
//! instructions; asking for the memory the next items will touch a few items ahead lets
//! the loads overlap with the current item's work.

use crate::value::Document;
use std::borrow::Borrow;
use std::collections::VecDeque;

/// Asks the CPU to start loading the `lines` cache lines (64 bytes each) from `ptr` into
/// cache. Only a hint: nothing is read, and any address is allowed.
#[inline]
pub(crate) fn prefetch<T>(ptr: *const T, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = ptr.cast::<i8>();
        for line in 0..lines {
            // SAFETY: a prefetch never faults nor changes memory, whatever the address,
            // and SSE is part of every x86_64 CPU.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(line * 64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, lines);
}

/// How many documents ahead [`prefetching`] asks for.
const DOCUMENTS_AHEAD: usize = 8;

/// Yields `docs` unchanged and in order, each after the document [`DOCUMENTS_AHEAD`]
/// places later was asked into cache.
pub(crate) fn prefetching<D: Borrow<Document>>(
    docs: impl IntoIterator<Item = D>,
) -> impl Iterator<Item = D> {
    let mut docs = docs.into_iter();
    let mut ahead = VecDeque::with_capacity(DOCUMENTS_AHEAD);
    std::iter::from_fn(move || {
        while ahead.len() < DOCUMENTS_AHEAD {
            let Some(doc) = docs.next() else { break };
            doc.borrow().prefetch();
            ahead.push_back(doc);
        }
        ahead.pop_front()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    #[test]
    fn prefetching_yields_every_document_once_in_order() {
        for n in [
            0,
            1,
            DOCUMENTS_AHEAD - 1,
            DOCUMENTS_AHEAD,
            3 * DOCUMENTS_AHEAD + 1,
        ] {
            let docs: Vec<Document> = (0..n)
                .map(|i| crate::doc! {"i" => Value::Int64(i as i64)})
                .collect();
            let seen: Vec<&Document> = prefetching(&docs).collect();
            assert_eq!(seen.len(), n);
            assert!(seen.iter().zip(&docs).all(|(a, b)| std::ptr::eq(*a, b)));
            let owned: Vec<Document> = prefetching(docs.clone()).collect();
            assert_eq!(owned, docs);
        }
    }
}
