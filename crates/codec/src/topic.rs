//! Syntax of topic names and topic filters (section 4.7) and of shared subscriptions (4.8.2).
//!
//! Only the form is checked here; matching a name against a filter is the broker's business.

use crate::error::DecodeError;

/// The prefix of a shared subscription's topic filter.
pub const SHARE_PREFIX: &str = "$share/";

/// A topic name is non-empty [MQTT-4.7.3-1] and has no wildcard [MQTT-3.3.2-2].
pub fn validate_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.is_empty() {
        return Err(DecodeError::EmptyTopicName);
    }
    if topic.bytes().any(|byte| byte == b'+' || byte == b'#') {
        return Err(DecodeError::WildcardInTopicName);
    }
    Ok(())
}

/// A topic filter is non-empty [MQTT-4.7.3-1]; `#` stands alone as the last level [MQTT-4.7.1-1];
/// `+` fills a whole level [MQTT-4.7.1-2]; a shared subscription is
/// `$share/{ShareName}/{filter}` with a non-empty ShareName free of `/`, `+` and `#`
/// [MQTT-4.8.2-1, MQTT-4.8.2-2].
pub fn validate_topic_filter(filter: &str) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::EmptyTopicFilter);
    }
    let plain = if filter.starts_with(SHARE_PREFIX) {
        split_shared(filter)
            .ok_or(DecodeError::InvalidSharedSubscription)?
            .1
    } else {
        filter
    };
    let mut levels = plain.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(DecodeError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(DecodeError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Splits `$share/{ShareName}/{filter}` into ShareName and filter; `None` when `filter` is not a
/// well-formed shared subscription (including when it does not start with `$share/`).
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return None;
    }
    Some((group, inner))
}

/// Whether a topic filter contains `+` or `#` (outside a shared subscription's ShareName).
pub fn has_wildcard(filter: &str) -> bool {
    let plain = split_shared(filter).map_or(filter, |(_, inner)| inner);
    plain.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("a/b"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(DecodeError::EmptyTopicName));
        assert_eq!(
            validate_topic_name("a/+"),
            Err(DecodeError::WildcardInTopicName)
        );
        assert_eq!(
            validate_topic_name("a#"),
            Err(DecodeError::WildcardInTopicName)
        );
    }

    #[test]
    fn topic_filters_mqtt_4_7_1() {
        for good in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/+",
            "a//b",
            "sport/tennis/#",
            "$SYS/#",
        ] {
            assert_eq!(validate_topic_filter(good), Ok(()), "{good}");
        }
        for bad in ["a#", "a/#/b", "#/", "a/b#", "##"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(DecodeError::MisplacedMultiLevelWildcard),
                "{bad}"
            );
        }
        for bad in ["a+", "a/+b", "++"] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(DecodeError::MisplacedSingleLevelWildcard),
                "{bad}"
            );
        }
        assert_eq!(
            validate_topic_filter(""),
            Err(DecodeError::EmptyTopicFilter)
        );
    }

    #[test]
    fn shared_subscriptions_mqtt_4_8_2() {
        assert_eq!(split_shared("$share/g/a/+"), Some(("g", "a/+")));
        assert_eq!(split_shared("$share/g//"), Some(("g", "/")));
        assert_eq!(validate_topic_filter("$share/g/#"), Ok(()));
        for bad in [
            "$share/",
            "$share//a",
            "$share/g",
            "$share/g/",
            "$share/g+/a",
            "$share/#/a",
        ] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(DecodeError::InvalidSharedSubscription),
                "{bad}"
            );
        }
        assert_eq!(
            validate_topic_filter("$share/g/a#"),
            Err(DecodeError::MisplacedMultiLevelWildcard)
        );
        // Not a shared subscription: `$share` without the slash is an ordinary filter.
        assert_eq!(validate_topic_filter("$share"), Ok(()));
        assert!(has_wildcard("$share/g/a/+"));
        assert!(!has_wildcard("$share/g/a/b"));
    }
}
