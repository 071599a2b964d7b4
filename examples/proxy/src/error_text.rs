//! An error and its causes on one line, each cause once.
//!
//! Many errors print their cause in their own message and also return it from
//! `source()`, so anyhow's `{:#}` would print such a cause twice.

/// `e` and its causes joined by `": "`, leaving out a cause whose text the line already
/// ends with.
pub(crate) fn chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("not found")]
    struct Leaf;

    /// Prints its cause and returns it as `source()` too.
    #[derive(Debug, thiserror::Error)]
    #[error("fetching failed: {0}")]
    struct Both(#[source] Leaf);

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = anyhow::Error::new(Both(Leaf)).context("certificate for a");
        assert_eq!(
            format!("{e:#}"),
            "certificate for a: fetching failed: not found: not found"
        );
        assert_eq!(chain(&e), "certificate for a: fetching failed: not found");
    }

    #[test]
    fn causes_not_in_the_message_are_all_kept() {
        let e = anyhow::Error::new(Leaf)
            .context("reading x")
            .context("starting");
        assert_eq!(chain(&e), "starting: reading x: not found");
    }
}
