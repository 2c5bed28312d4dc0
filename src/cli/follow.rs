//! `console --follow`: which part of each fresh tail of the serial log is new.
//!
//! The daemon answers with the log's last bytes and a `size`, but `size` is not a running offset:
//! the VMM rotates the log (`console.log` to `console.log.1`, dropping the older one) and the
//! answer counts the rotated file only while the current one is short. So growth by `size` is
//! trusted only when the bytes before it end where the last tail ended; otherwise the last tail's
//! end is looked for in the new one, and failing that the whole tail is new.

/// How much of the last tail is kept to recognise it by.
const ANCHOR: usize = 256;

pub struct Follower {
    /// The first tail prints only its last `first` bytes (`--tail`).
    first: u64,
    /// The last answer's size, `None` before the first.
    size: Option<u64>,
    /// The end of the last tail.
    anchor: String,
}

impl Follower {
    pub fn new(first: u64) -> Follower {
        Follower {
            first,
            size: None,
            anchor: String::new(),
        }
    }

    /// The new part of `log` (a tail of the console log, `size` as the daemon counts it).
    pub fn fresh<'a>(&mut self, log: &'a str, size: u64) -> &'a str {
        let out = match self.size {
            None => tail(log, self.first),
            Some(before) => {
                let grown = tail(log, size.saturating_sub(before));
                let head = &log[..log.len() - grown.len()];
                if size >= before && ends_agree(head, &self.anchor) {
                    grown
                } else {
                    self.relocate(log)
                }
            }
        };
        self.size = Some(size);
        self.anchor = tail(log, ANCHOR as u64).to_string();
        out
    }

    /// What follows the last tail's end in `log`, or all of `log` when that end is gone.
    fn relocate<'a>(&self, log: &'a str) -> &'a str {
        if self.anchor.is_empty() {
            return log;
        }
        match log.rfind(self.anchor.as_str()) {
            Some(i) => &log[i + self.anchor.len()..],
            None => log,
        }
    }
}

/// Whether `a` and `b` end the same way over the length of the shorter (the daemon's window may
/// have slid past the start of the last tail).
fn ends_agree(a: &str, b: &str) -> bool {
    let n = a.len().min(b.len());
    a.as_bytes()[a.len() - n..] == b.as_bytes()[b.len() - n..]
}

/// The last `n` bytes of `log`, cut forward to a character boundary.
pub fn tail(log: &str, n: u64) -> &str {
    let n = usize::try_from(n).unwrap_or(usize::MAX).min(log.len());
    let mut start = log.len() - n;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_grew_is_new() {
        let mut f = Follower::new(5);
        assert_eq!(
            f.fresh("hello world", 11),
            "world",
            "the first tail honours --tail"
        );
        assert_eq!(f.fresh("hello world", 11), "");
        assert_eq!(f.fresh("hello world!\n", 13), "!\n");
        // The daemon's window slid: the tail starts later, what grew is its end.
        assert_eq!(f.fresh("lo world!\nnext\n", 18), "next\n");
    }

    #[test]
    fn a_size_that_does_not_add_up_is_checked_against_the_content() {
        // After a rotation the daemon's size drops once the current file passes its window.
        let mut f = Follower::new(1000);
        assert_eq!(f.fresh("line 1\nline 2\n", 5_000_014), "line 1\nline 2\n");
        assert_eq!(f.fresh("line 1\nline 2\nline 3\n", 1_000_021), "line 3\n");
        // Grown by less than the new content: the content decides.
        assert_eq!(
            f.fresh("line 1\nline 2\nline 3\nline 4\n", 1_000_024),
            "line 4\n"
        );
        // Nothing recognisable: it is all new.
        assert_eq!(f.fresh("other\n", 1), "other\n");
        assert!(ends_agree("abc", "bc") && ends_agree("", "x") && !ends_agree("abc", "xc"));
    }

    #[test]
    fn tails_never_cut_a_character() {
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aé", 2), "é");
        assert_eq!(tail("abc", 99), "abc");
        let mut f = Follower::new(3);
        assert_eq!(f.fresh("boot: é ok", 11), " ok");
    }
}
