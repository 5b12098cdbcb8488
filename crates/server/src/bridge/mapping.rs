//! The topic rules of a bridge at work: which rule a topic falls under, and its name on the
//! other side (strip one prefix, put the other). The first rule that matches wins, as in
//! Mosquitto; a topic that no rule of that direction matches is not carried.

use tern_codec::QoS;

use super::config::TopicRule;

/// The rules of one bridge, split by direction, with their filters on each side.
#[derive(Debug, Clone)]
pub(crate) struct Mapper {
    out: Vec<Mapping>,
    inbound: Vec<Mapping>,
}

#[derive(Debug, Clone)]
struct Mapping {
    /// The filter a topic must match on the side it comes from.
    from_filter: String,
    from_prefix: String,
    to_prefix: String,
    qos: QoS,
}

impl Mapping {
    fn map(&self, topic: &str) -> Option<(String, QoS)> {
        if !topic_matches(&self.from_filter, topic) {
            return None;
        }
        // A `#` also matches its parent level (`a/#` matches `a`): the prefix `a/` is then
        // not there to strip, and the topic is not carried.
        let rest = topic.strip_prefix(self.from_prefix.as_str())?;
        let mapped = format!("{}{rest}", self.to_prefix);
        (!mapped.is_empty()).then_some((mapped, self.qos))
    }
}

impl Mapper {
    pub(crate) fn new(rules: &[TopicRule]) -> Mapper {
        let mut out = Vec::new();
        let mut inbound = Vec::new();
        for rule in rules {
            if rule.direction.carries_out() {
                out.push(Mapping {
                    from_filter: rule.local_filter(),
                    from_prefix: rule.local_prefix.clone(),
                    to_prefix: rule.remote_prefix.clone(),
                    qos: rule.qos(),
                });
            }
            if rule.direction.carries_in() {
                inbound.push(Mapping {
                    from_filter: rule.remote_filter(),
                    from_prefix: rule.remote_prefix.clone(),
                    to_prefix: rule.local_prefix.clone(),
                    qos: rule.qos(),
                });
            }
        }
        Mapper { out, inbound }
    }

    /// A local topic's name at the remote broker, and the rule's QoS.
    pub(crate) fn to_remote(&self, local_topic: &str) -> Option<(String, QoS)> {
        self.out.iter().find_map(|m| m.map(local_topic))
    }

    /// A remote topic's name on this broker, and the rule's QoS.
    pub(crate) fn to_local(&self, remote_topic: &str) -> Option<(String, QoS)> {
        self.inbound.iter().find_map(|m| m.map(remote_topic))
    }

    /// The local subscriptions of the `out` and `both` rules: (filter, QoS).
    pub(crate) fn local_filters(&self) -> impl Iterator<Item = (&str, QoS)> {
        self.out.iter().map(|m| (m.from_filter.as_str(), m.qos))
    }

    /// The remote subscriptions of the `in` and `both` rules: (filter, QoS).
    pub(crate) fn remote_filters(&self) -> impl Iterator<Item = (&str, QoS)> {
        self.inbound.iter().map(|m| (m.from_filter.as_str(), m.qos))
    }
}

/// The properties of a message carried over: those of its publisher (expiry, content type,
/// response topic, correlation data, user properties), not those of the hop.
pub(crate) fn forwarded(mut properties: tern_codec::Properties) -> tern_codec::Properties {
    properties.subscription_identifiers.clear();
    properties.topic_alias = None;
    properties
}

/// Whether `topic` matches `filter` (MQTT 4.7): `+` one level, `#` this level and all below
/// (and the parent), and no wildcard at the first level matches a `$` topic [MQTT-4.7.2-1].
pub(crate) fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::super::config::BridgeDirection;
    use super::*;

    fn rule(
        pattern: &str,
        direction: BridgeDirection,
        qos: u8,
        local: &str,
        remote: &str,
    ) -> TopicRule {
        TopicRule {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    /// MQTT 4.7: wildcards, the parent level of `#`, and `$` topics.
    #[test]
    fn filters_match_as_mqtt_4_7() {
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("#", "x"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("+", ""));
    }

    /// Issue 15: topics are mapped as Mosquitto's bridges do: strip the prefix of the side the
    /// message comes from, put the other side's; the first matching rule wins.
    #[test]
    fn prefixes_are_swapped_per_direction() {
        let mapper = Mapper::new(&[
            rule("sensors/#", BridgeDirection::Out, 1, "", "site-7/"),
            rule("commands/#", BridgeDirection::In, 2, "local/", "cloud/"),
            rule("both/+", BridgeDirection::Both, 0, "l/", "r/"),
        ]);
        assert_eq!(
            mapper.to_remote("sensors/t1"),
            Some(("site-7/sensors/t1".into(), QoS::AtLeastOnce))
        );
        assert_eq!(mapper.to_remote("commands/x"), None, "an in rule");
        assert_eq!(
            mapper.to_local("cloud/commands/go"),
            Some(("local/commands/go".into(), QoS::ExactlyOnce))
        );
        assert_eq!(mapper.to_local("cloud/sensors/t1"), None);
        assert_eq!(
            mapper.to_remote("l/both/a"),
            Some(("r/both/a".into(), QoS::AtMostOnce))
        );
        assert_eq!(
            mapper.to_local("r/both/a"),
            Some(("l/both/a".into(), QoS::AtMostOnce))
        );
        let local: Vec<_> = mapper.local_filters().map(|(f, _)| f.to_owned()).collect();
        assert_eq!(local, ["sensors/#", "l/both/+"]);
        let remote: Vec<_> = mapper.remote_filters().map(|(f, _)| f.to_owned()).collect();
        assert_eq!(remote, ["cloud/commands/#", "r/both/+"]);
    }

    /// Issue 15: `prefix/#` also matches `prefix` itself, which has no name on the other side
    /// when the prefix is stripped: not carried.
    #[test]
    fn parent_level_without_the_prefix_is_not_carried() {
        let mapper = Mapper::new(&[rule("#", BridgeDirection::Out, 1, "a/", "")]);
        assert_eq!(mapper.to_remote("a"), None);
        assert_eq!(
            mapper.to_remote("a/b"),
            Some(("b".into(), QoS::AtLeastOnce))
        );
    }
}
