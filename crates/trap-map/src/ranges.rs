//! Half-open byte ranges and the few set operations the planner needs.
//!
//! Range lists are kept normalized (sorted, disjoint, non-adjacent) so that membership is a
//! binary search and subtraction is one merge pass.

/// A half-open range `[start, end)` of BAR offsets.
pub(crate) type Range = (u64, u64);

/// Sorts, drops empty ranges and merges overlapping or touching ones.
pub(crate) fn normalize(mut v: Vec<Range>) -> Vec<Range> {
    v.retain(|r| r.0 < r.1);
    v.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

/// `a` minus `b`; both normalized, and so is the result.
pub(crate) fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut j = 0;
    for &(mut start, end) in a {
        while j < b.len() && b[j].1 <= start {
            j += 1;
        }
        let mut k = j;
        while start < end {
            match b.get(k) {
                Some(&(bs, be)) if bs < end => {
                    if bs > start {
                        out.push((start, bs));
                    }
                    start = start.max(be);
                    k += 1;
                }
                _ => {
                    out.push((start, end));
                    break;
                }
            }
        }
    }
    out
}

/// Whether `x` lies in the normalized list `v`.
pub(crate) fn contains(v: &[Range], x: u64) -> bool {
    let i = v.partition_point(|r| r.1 <= x);
    v.get(i).is_some_and(|r| r.0 <= x)
}

/// Whether every byte of `r` lies in the normalized list `v` (`r` non-empty).
pub(crate) fn covers(v: &[Range], r: Range) -> bool {
    let i = v.partition_point(|x| x.1 <= r.0);
    v.get(i).is_some_and(|x| x.0 <= r.0 && r.1 <= x.1)
}

/// Whether two ranges share a byte.
pub(crate) fn overlaps(a: Range, b: Range) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_merges_touching_and_overlapping() {
        assert_eq!(
            normalize(vec![(5, 8), (0, 2), (2, 3), (7, 10), (4, 4)]),
            vec![(0, 3), (5, 10)]
        );
    }

    #[test]
    fn subtract_splits_and_trims() {
        let a = [(0, 100), (200, 300)];
        let b = [(10, 20), (90, 210), (250, 260)];
        assert_eq!(
            subtract(&a, &b),
            vec![(0, 10), (20, 90), (210, 250), (260, 300)]
        );
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(subtract(&a, &[(0, 1000)]), vec![]);
    }

    #[test]
    fn membership() {
        let v = [(0, 10), (20, 30)];
        assert!(contains(&v, 0) && contains(&v, 29));
        assert!(!contains(&v, 10) && !contains(&v, 30));
        assert!(covers(&v, (20, 30)));
        assert!(!covers(&v, (5, 25)));
        assert!(overlaps((0, 10), (9, 12)) && !overlaps((0, 10), (10, 12)));
    }
}
