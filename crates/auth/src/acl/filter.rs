//! Topic filters as level lists, and the three relations the ACL engine needs between them:
//! a filter matches a topic, a filter covers another (every topic of the second is a topic of
//! the first), two filters intersect (some topic is a topic of both).
//!
//! Rules of MQTT 5 §4.7 that all three honour: `+` is one whole level, possibly empty; `#` is
//! the whole last level and also matches the parent (`a/#` matches `a`) [MQTT-4.7.1-2]; a
//! wildcard in the first level never matches a topic that begins with `$` [MQTT-4.7.2-1].
//! A topic has at least one level ([MQTT-4.7.3-1]: at least one character).

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Level {
    Literal(Box<str>),
    /// `+`
    Plus,
    /// `#`, always the last level.
    Hash,
}

/// A valid topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    levels: Box<[Level]>,
}

/// Why a filter is not valid ([MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty topic filter")]
    Empty,
    #[error("`#` must be a whole level and the last one")]
    Hash,
    #[error("`+` must be a whole level")]
    Plus,
    #[error("a topic filter may not contain U+0000")]
    Nul,
    #[error("a topic filter is at most 65535 bytes")]
    TooLong,
}

impl Filter {
    pub(crate) fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.is_empty() {
            return Err(FilterError::Empty);
        }
        if text.len() > 65_535 {
            return Err(FilterError::TooLong);
        }
        if text.contains('\0') {
            return Err(FilterError::Nul);
        }
        let mut levels = Vec::new();
        let mut parts = text.split('/').peekable();
        while let Some(part) = parts.next() {
            let level = match part {
                "#" if parts.peek().is_none() => Level::Hash,
                "+" => Level::Plus,
                _ if part.contains('#') => return Err(FilterError::Hash),
                _ if part.contains('+') => return Err(FilterError::Plus),
                _ => Level::Literal(part.into()),
            };
            levels.push(level);
        }
        Ok(Filter {
            levels: levels.into(),
        })
    }

    pub(crate) fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Every topic of `other` is a topic of `self`.
    pub(crate) fn covers(&self, other: &Filter) -> bool {
        covers(&self.levels, &other.levels)
    }

    /// Some topic is a topic of both.
    pub(crate) fn intersects(&self, other: &Filter) -> bool {
        intersects(&self.levels, &other.levels)
    }

    /// `topic` (a topic name: no wildcards) is a topic of `self`.
    #[cfg(test)]
    pub(crate) fn matches(&self, topic: &str) -> bool {
        let levels: Vec<Level> = topic.split('/').map(|l| Level::Literal(l.into())).collect();
        covers(&self.levels, &levels)
    }
}

/// A first level that only a literal may match.
fn is_reserved_first(level: Option<&Level>) -> bool {
    matches!(level, Some(Level::Literal(text)) if text.starts_with('$'))
}

/// Every topic matched by `inner` is matched by `outer`.
fn covers(outer: &[Level], inner: &[Level]) -> bool {
    let mut i = 0;
    loop {
        match (outer.get(i), inner.get(i)) {
            // `#` takes whatever `inner` has left, including nothing (the parent), except a
            // `$` topic at the first level.
            (Some(Level::Hash), rest) => return !(i == 0 && is_reserved_first(rest)),
            (None, None) => return true,
            // `inner` goes on (or is a `#`, which also goes on) where `outer` stops, or stops
            // where `outer` needs more levels.
            (None, Some(_)) | (Some(_), None) | (Some(_), Some(Level::Hash)) => return false,
            (Some(Level::Plus), Some(Level::Plus)) => {}
            (Some(Level::Plus), Some(level @ Level::Literal(_))) => {
                if i == 0 && is_reserved_first(Some(level)) {
                    return false;
                }
            }
            (Some(Level::Literal(a)), Some(Level::Literal(b))) => {
                if a != b {
                    return false;
                }
            }
            (Some(Level::Literal(_)), Some(Level::Plus)) => return false,
        }
        i += 1;
    }
}

/// Some topic is matched by both `a` and `b`.
fn intersects(a: &[Level], b: &[Level]) -> bool {
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (None, None) => return true,
            // `#` meets anything the other side has left (or its end: the parent), except a
            // `$` first level.
            (Some(Level::Hash), other) | (other, Some(Level::Hash)) => {
                return !(i == 0 && is_reserved_first(other));
            }
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Level::Plus), Some(Level::Plus)) => {}
            (Some(Level::Plus), Some(literal)) | (Some(literal), Some(Level::Plus)) => {
                if i == 0 && is_reserved_first(Some(literal)) {
                    return false;
                }
            }
            (Some(Level::Literal(x)), Some(Level::Literal(y))) => {
                if x != y {
                    return false;
                }
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(text: &str) -> Filter {
        Filter::parse(text).unwrap()
    }

    #[test]
    fn invalid_filters_are_refused_mqtt_4_7_1() {
        assert_eq!(Filter::parse(""), Err(FilterError::Empty));
        assert_eq!(Filter::parse("a/#/b"), Err(FilterError::Hash));
        assert_eq!(Filter::parse("a#"), Err(FilterError::Hash));
        assert_eq!(Filter::parse("a/b+"), Err(FilterError::Plus));
        assert_eq!(Filter::parse("a\0"), Err(FilterError::Nul));
        for good in ["#", "+", "/", "a//b", "+/+/#", "$SYS/#", "%u/%c"] {
            assert!(Filter::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn matching_honours_plus_hash_parent_and_dollar_mqtt_4_7() {
        for (filter, topic, expected) in [
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("+/+", "/", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("a/b", "a/b/c", false),
        ] {
            assert_eq!(f(filter).matches(topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn covers_table() {
        for (outer, inner, expected) in [
            ("#", "a/#", true),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("+/#", "$SYS/a", false),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/#", "#", false),
            ("a/b/#", "a/+", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("+/b", "a/b", true),
            ("a", "a/#", false),
            ("$SYS/#", "$SYS/broker/#", true),
        ] {
            assert_eq!(f(outer).covers(&f(inner)), expected, "{outer} ⊇ {inner}");
        }
    }

    #[test]
    fn intersects_table() {
        for (a, b, expected) in [
            ("#", "a/b", true),
            ("#", "$SYS/#", false),
            ("+/#", "$SYS/x", false),
            ("a/#", "a", true),
            ("a/+", "+/b", true),
            ("a/+", "b/+", false),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/#", true),
            ("a", "a/+", false),
            ("$SYS/+", "$SYS/#", true),
            ("+", "+", true),
        ] {
            assert_eq!(f(a).intersects(&f(b)), expected, "{a} ∩ {b}");
            assert_eq!(f(b).intersects(&f(a)), expected, "{b} ∩ {a}");
        }
    }
}
