//! The ACL engine against a model: random Mosquitto ACL files, checked over every topic of a
//! small universe against a direct transcription of Mosquitto's decision (ordered rule lists,
//! denials first, the user's block before the patterns). The universe has every level the
//! rules use, the empty level, a level no rule names and a `$` level, one level deeper than
//! any rule, so it stands for all topics.
//!
//! Checks: `may_read`/`may_write` equal the model on every topic (the trie is exact); and
//! `classify` is sound: `Granted` only if every topic of the filter may be read, `Denied`
//! only if none may (`Partial` is always allowed: it is checked per message).

use proptest::prelude::*;
use tern_auth::{Acl, FilterAccess};

const RULE_LEVELS: &[&str] = &["a", "b", "$s", "+"];
const TOPIC_LEVELS: &[&str] = &["a", "b", "$s", "", "z"];

#[derive(Debug, Clone)]
struct Line {
    pattern: bool,
    access: &'static str,
    filter: String,
}

#[derive(Debug, Clone)]
struct Model {
    anonymous: Vec<Line>,
    user_a: Vec<Line>,
    user_b: Vec<Line>,
    patterns: Vec<Line>,
}

fn filter_strategy(allow_templates: bool) -> impl Strategy<Value = String> {
    let mut levels: Vec<&'static str> = RULE_LEVELS.to_vec();
    if allow_templates {
        levels.extend(["%u", "%c"]);
    }
    (
        prop::collection::vec(prop::sample::select(levels), 1..=3),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            levels.join("/")
        })
}

fn line_strategy(pattern: bool) -> impl Strategy<Value = Line> {
    (
        prop::sample::select(vec!["read", "write", "readwrite", "deny"]),
        filter_strategy(pattern),
    )
        .prop_map(move |(access, filter)| Line {
            pattern,
            access,
            filter,
        })
}

fn model_strategy() -> impl Strategy<Value = Model> {
    (
        prop::collection::vec(line_strategy(false), 0..4),
        prop::collection::vec(line_strategy(false), 0..4),
        prop::collection::vec(line_strategy(false), 0..4),
        prop::collection::vec(line_strategy(true), 0..4),
    )
        .prop_map(|(anonymous, user_a, user_b, patterns)| Model {
            anonymous,
            user_a,
            user_b,
            patterns,
        })
}

impl Model {
    fn text(&self) -> String {
        fn block(text: &mut String, lines: &[Line]) {
            for line in lines {
                let keyword = if line.pattern { "pattern" } else { "topic" };
                text.push_str(&format!("{keyword} {} {}\n", line.access, line.filter));
            }
        }
        let mut text = String::new();
        block(&mut text, &self.anonymous);
        block(&mut text, &self.patterns);
        text.push_str("user a\n");
        block(&mut text, &self.user_a);
        text.push_str("user b\n");
        block(&mut text, &self.user_b);
        text
    }

    /// Mosquitto's `mosquitto_acl_check_default`, transcribed.
    fn allowed(&self, username: Option<&str>, client_id: &str, topic: &str, want: &str) -> bool {
        let grants = |access: &str| access == "readwrite" || access == want;
        let nobody = Vec::new();
        let own = match username {
            None => &self.anonymous,
            Some("a") => &self.user_a,
            Some("b") => &self.user_b,
            Some(_) => &nobody,
        };
        let ordered = |lines: &[Line]| -> Vec<Line> {
            let mut denies: Vec<Line> = lines
                .iter()
                .filter(|l| l.access == "deny")
                .cloned()
                .collect();
            denies.extend(lines.iter().filter(|l| l.access != "deny").cloned());
            denies
        };
        for line in ordered(own) {
            if matches(&line.filter, topic) {
                if line.access == "deny" {
                    return false;
                }
                if grants(line.access) {
                    return true;
                }
            }
        }
        if !self.patterns.is_empty()
            && (username.is_some_and(|u| u.contains(['+', '#'])) || client_id.contains(['+', '#']))
        {
            return false;
        }
        for line in ordered(&self.patterns) {
            let levels: Vec<&str> = line.filter.split('/').collect();
            if levels.contains(&"%u") && username.is_none() {
                continue;
            }
            let filter = levels
                .iter()
                .map(|level| match *level {
                    "%u" => username.unwrap_or_default(),
                    "%c" => client_id,
                    other => other,
                })
                .collect::<Vec<_>>()
                .join("/");
            if matches(&filter, topic) {
                if line.access == "deny" {
                    return false;
                }
                if grants(line.access) {
                    return true;
                }
            }
        }
        false
    }
}

/// MQTT topic matching, directly.
fn matches(filter: &str, topic: &str) -> bool {
    fn rest(filter: &[&str], topic: &[&str]) -> bool {
        match filter.first() {
            None => topic.is_empty(),
            Some(&"#") => true,
            Some(&"+") => !topic.is_empty() && rest(&filter[1..], &topic[1..]),
            Some(level) => topic.first() == Some(level) && rest(&filter[1..], &topic[1..]),
        }
    }
    let filter: Vec<&str> = filter.split('/').collect();
    let topic: Vec<&str> = topic.split('/').collect();
    if topic[0].starts_with('$') && (filter[0] == "+" || filter[0] == "#") {
        return false;
    }
    rest(&filter, &topic)
}

fn universe() -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    let mut layer: Vec<String> = vec![String::new()];
    for depth in 1..=4 {
        let mut next = Vec::new();
        for prefix in &layer {
            for level in TOPIC_LEVELS {
                next.push(if depth == 1 {
                    (*level).to_owned()
                } else {
                    format!("{prefix}/{level}")
                });
            }
        }
        topics.extend(next.iter().filter(|t| !t.is_empty()).cloned());
        layer = next;
    }
    topics
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Rules checked per topic and per filter agree with Mosquitto's decision.
    #[test]
    fn the_engine_agrees_with_mosquittos_decision(
        model in model_strategy(),
        username in prop::sample::select(vec![None, Some("a"), Some("b"), Some("c"), Some("a+")]),
        client_id in prop::sample::select(vec!["a", "b", "#"]),
        filters in prop::collection::vec(filter_strategy(false), 1..6),
    ) {
        let acl = Acl::parse(&model.text()).unwrap();
        let rules = acl.for_client(username, client_id);
        let topics = universe();
        let readable: Vec<bool> = topics
            .iter()
            .map(|topic| model.allowed(username, client_id, topic, "read"))
            .collect();
        for (topic, &expected) in topics.iter().zip(&readable) {
            prop_assert_eq!(rules.may_read(topic), expected, "read {}", topic);
            prop_assert_eq!(
                rules.may_write(topic),
                model.allowed(username, client_id, topic, "write"),
                "write {}", topic
            );
        }
        for filter in &filters {
            let reached: Vec<bool> = topics
                .iter()
                .zip(&readable)
                .filter(|(topic, _)| matches(filter, topic))
                .map(|(_, &readable)| readable)
                .collect();
            match rules.classify(filter) {
                FilterAccess::Granted => prop_assert!(reached.iter().all(|&r| r), "granted {}", filter),
                FilterAccess::Denied => prop_assert!(reached.iter().all(|&r| !r), "denied {}", filter),
                FilterAccess::Partial => {}
            }
        }
    }
}
