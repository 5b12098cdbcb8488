//! The access rules: Mosquitto's ACL file, compiled once ([`Acl`]), then specialised per client
//! at connect ([`Acl::for_client`] → [`ClientRules`]) for the checks: `may_write(topic)` on
//! PUBLISH and wills, `classify(filter)` at SUBSCRIBE, `may_read(topic)` per message only for
//! subscriptions classified [`FilterAccess::Partial`].
//!
//! # The file (Mosquitto's syntax and meaning)
//! ```text
//! # rules before any `user` line apply to anonymous clients (no username)
//! topic read public/#
//! user alice
//! topic readwrite alice/#          # access: read | write | readwrite | deny; none = readwrite
//! topic deny alice/secret/#
//! pattern write devices/%c/state   # for every client; %u = username, %c = client id
//! ```
//! A decision for a topic and an access (read or write) is Mosquitto's:
//! 1. the client's own rules (its `user` block, or the anonymous block): a matching `deny`
//!    refuses; else a matching rule that grants the access allows;
//! 2. then the `pattern` rules, for every client, the same way: `deny` first, then grants.
//!    A pattern with `%u` is skipped for a client without username. If the username or the
//!    client id contains `+` or `#`, every pattern refuses (they could widen a pattern);
//! 3. nothing matched: refused. A client whose username has no block and that no pattern
//!    matches may do nothing: the default is deny.
//!
//! `%u`/`%c` are substituted only where a whole level is exactly `%u` or `%c` (Mosquitto 2.0).
//! Wildcards in a rule's first level do not match topics beginning with `$`, so `$SYS` must be
//! granted by a rule that names it.
//!
//! # Filters at SUBSCRIBE
//! [`ClientRules::classify`] answers for the whole set of topics a filter can match:
//! [`FilterAccess::Granted`] when every one may be read, [`FilterAccess::Denied`] when none
//! may, else [`FilterAccess::Partial`] (the server then checks each message). The answer is
//! exact for a filter inside one grant or one denial, or outside every grant; when only a
//! union of several rules decides, it is `Partial`, which is always safe (the per-message
//! check is exact) and merely costs a check per message. Cost: linear in the client's rules,
//! paid once per SUBSCRIBE.

mod filter;
mod trie;

use std::collections::HashMap;
use std::sync::Arc;

use filter::{Filter, Level};
use trie::{DENY, READ, RuleTrie, WRITE};

pub use filter::FilterError;

use crate::warning::Warning;

/// What a subscription filter may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAccess {
    /// Every topic the filter matches may be read: deliver without further checks.
    Granted,
    /// No topic the filter matches may be read: refuse the subscription (SUBACK 0x80 in
    /// 3.1.1, 0x87 Not authorized in 5).
    Denied,
    /// Some may, some may not: grant, and check [`ClientRules::may_read`] per message.
    Partial,
}

/// The access keyword of a `topic` or `pattern` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn bits(self) -> u8 {
        match self {
            Access::Read => READ,
            Access::Write => WRITE,
            Access::ReadWrite => READ | WRITE,
            Access::Deny => DENY,
        }
    }

    fn parse(word: &str) -> Option<Access> {
        Some(match word {
            "read" => Access::Read,
            "write" => Access::Write,
            "readwrite" => Access::ReadWrite,
            "deny" => Access::Deny,
            _ => return None,
        })
    }
}

/// An ACL file that cannot be used, with the (1-based) line at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct AclError {
    pub line: usize,
    pub kind: AclErrorKind,
}

/// What is wrong with an ACL line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclErrorKind {
    #[error("unknown keyword {0:?} (expected `user`, `topic` or `pattern`)")]
    UnknownKeyword(String),
    #[error("`{0}` needs a topic filter")]
    MissingTopic(&'static str),
    #[error("`user` needs a username")]
    MissingUsername,
    #[error("unknown access {0:?} (expected read, write, readwrite or deny)")]
    UnknownAccess(String),
    #[error("invalid topic filter {filter:?}: {error}")]
    Filter { filter: String, error: FilterError },
}

/// A filter of a permissions list that is not a valid topic filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{list}[{index}]: invalid topic filter {filter:?}: {error}")]
pub struct PermissionError {
    /// `publish`, `subscribe` or `deny`.
    pub list: &'static str,
    pub index: usize,
    pub filter: String,
    pub error: FilterError,
}

/// Topic permissions from a JWT's claims or an HTTP back end's answer: filters, with `%u` and
/// `%c` substituted as in `pattern` lines. `publish` grants write, `subscribe` grants read
/// (subscribing and receiving), `deny` refuses both and wins over the grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub deny: Vec<String>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    filter: Filter,
    bits: u8,
}

/// A list of rules: kept for the filter-vs-filter answers of `classify`, and compiled into a
/// trie for the per-topic checks.
#[derive(Debug, Clone, Default)]
struct RuleSet {
    rules: Vec<Rule>,
    trie: RuleTrie,
}

impl RuleSet {
    fn push(&mut self, filter: Filter, bits: u8) {
        self.trie.insert(&filter, bits);
        self.rules.push(Rule { filter, bits });
    }

    fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The bits among `wanted` of the rules that match `topic`.
    fn matching(&self, topic: &str, wanted: u8) -> u8 {
        self.trie.matching(topic, wanted)
    }

    /// Some rule with `bit` matches every topic of `filter`.
    fn any_covers(&self, filter: &Filter, bit: u8) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.bits & bit != 0 && rule.filter.covers(filter))
    }

    /// Some rule with `bit` matches some topic of `filter`.
    fn any_intersects(&self, filter: &Filter, bit: u8) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.bits & bit != 0 && rule.filter.intersects(filter))
    }
}

/// One level of a `pattern` line's filter.
#[derive(Debug, Clone)]
enum Template {
    Text(Box<str>),
    Username,
    ClientId,
}

/// A `pattern` line with `%u` or `%c`, instantiated per client.
#[derive(Debug, Clone)]
struct PatternTemplate {
    levels: Box<[Template]>,
    bits: u8,
    uses_username: bool,
}

/// A compiled ACL: Mosquitto's file, or a permissions list. Immutable; a reload builds a new
/// one (share it behind an `Arc` and swap it).
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Rules before any `user` line: for clients without username.
    anonymous: Option<Arc<RuleSet>>,
    users: HashMap<Box<str>, Arc<RuleSet>>,
    /// `pattern` lines without `%u`/`%c`: the same for every client, compiled once.
    fixed_patterns: Option<Arc<RuleSet>>,
    /// `pattern` lines with `%u`/`%c`: compiled per client.
    templates: Vec<PatternTemplate>,
    warnings: Vec<Warning>,
}

/// The part of an ACL file parse that collects rules by block.
#[derive(Default)]
struct AclBuilder {
    anonymous: RuleSet,
    users: HashMap<Box<str>, RuleSet>,
    fixed_patterns: RuleSet,
    templates: Vec<PatternTemplate>,
    warnings: Vec<Warning>,
}

impl AclBuilder {
    fn topic(&mut self, user: Option<&str>, filter: Filter, access: Access) {
        match user {
            None => self.anonymous.push(filter, access.bits()),
            Some(user) => self
                .users
                .entry(user.into())
                .or_default()
                .push(filter, access.bits()),
        }
    }

    /// Adds a pattern; false if it has no level to substitute.
    fn pattern(&mut self, filter: Filter, access: Access) -> bool {
        let mut uses_username = false;
        let mut uses_client_id = false;
        let levels: Box<[Template]> = filter
            .levels()
            .iter()
            .map(|level| match level {
                Level::Literal(text) if &**text == "%u" => {
                    uses_username = true;
                    Template::Username
                }
                Level::Literal(text) if &**text == "%c" => {
                    uses_client_id = true;
                    Template::ClientId
                }
                Level::Literal(text) => Template::Text(text.clone()),
                Level::Plus => Template::Text("+".into()),
                Level::Hash => Template::Text("#".into()),
            })
            .collect();
        if !uses_username && !uses_client_id {
            self.fixed_patterns.push(filter, access.bits());
            return false;
        }
        self.templates.push(PatternTemplate {
            levels,
            bits: access.bits(),
            uses_username,
        });
        true
    }

    fn build(self) -> Acl {
        let shared = |set: RuleSet| (!set.is_empty()).then(|| Arc::new(set));
        Acl {
            anonymous: shared(self.anonymous),
            users: self
                .users
                .into_iter()
                .map(|(user, set)| (user, Arc::new(set)))
                .collect(),
            fixed_patterns: shared(self.fixed_patterns),
            templates: self.templates,
            warnings: self.warnings,
        }
    }
}

/// The first whitespace-separated word of `text` and the rest, trimmed.
fn first_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim()),
        None => (text, ""),
    }
}

impl Acl {
    /// Parses an ACL file in Mosquitto's syntax (see the module documentation). Lines are
    /// split at `\n` (a trailing `\r` is dropped); blank lines and lines whose first non-blank
    /// character is `#` are comments; words are separated by blanks; a filter may contain
    /// blanks (everything after the access word).
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut builder = AclBuilder::default();
        let mut user: Option<&str> = None;
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let error = |kind| AclError { line, kind };
            let content = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (keyword, rest) = first_word(content);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error(AclErrorKind::MissingUsername));
                    }
                    user = Some(rest);
                }
                "topic" | "pattern" => {
                    let keyword = if keyword == "topic" {
                        "topic"
                    } else {
                        "pattern"
                    };
                    let (first, after) = first_word(rest);
                    if first.is_empty() {
                        return Err(error(AclErrorKind::MissingTopic(keyword)));
                    }
                    // One word: the filter, read and write. More: the access, then the filter.
                    let (access, topic) = if after.is_empty() {
                        (Access::ReadWrite, first)
                    } else {
                        let access = Access::parse(first)
                            .ok_or_else(|| error(AclErrorKind::UnknownAccess(first.to_owned())))?;
                        (access, after)
                    };
                    let filter = Filter::parse(topic).map_err(|e| {
                        error(AclErrorKind::Filter {
                            filter: topic.to_owned(),
                            error: e,
                        })
                    })?;
                    if keyword == "topic" {
                        if topic.contains("%u") || topic.contains("%c") {
                            builder.warnings.push(Warning {
                                line,
                                message: format!(
                                    "`topic {topic}`: %u and %c are substituted only in \
                                     `pattern` lines; here they are literal text"
                                ),
                            });
                        }
                        builder.topic(user, filter, access);
                    } else if !builder.pattern(filter, access) {
                        builder.warnings.push(Warning {
                            line,
                            message: format!(
                                "`pattern {topic}` has no level that is exactly %u or %c: it \
                                 applies to every client as written"
                            ),
                        });
                    }
                }
                other => return Err(error(AclErrorKind::UnknownKeyword(other.to_owned()))),
            }
        }
        Ok(builder.build())
    }

    /// An ACL from a permissions list (a JWT's claims, an HTTP answer): every filter is a
    /// pattern, so `%u` and `%c` are substituted per client; nothing else is allowed.
    pub fn from_permissions(permissions: &Permissions) -> Result<Acl, PermissionError> {
        let mut builder = AclBuilder::default();
        let lists = [
            ("publish", &permissions.publish, Access::Write),
            ("subscribe", &permissions.subscribe, Access::Read),
            ("deny", &permissions.deny, Access::Deny),
        ];
        for (list, filters, access) in lists {
            for (index, text) in filters.iter().enumerate() {
                let filter = Filter::parse(text).map_err(|error| PermissionError {
                    list,
                    index,
                    filter: text.clone(),
                    error,
                })?;
                builder.pattern(filter, access);
            }
        }
        Ok(builder.build())
    }

    /// How many rules the ACL holds (every `topic` and `pattern` line), for the server's log.
    pub fn rule_count(&self) -> usize {
        let sets = self
            .anonymous
            .iter()
            .chain(self.users.values())
            .chain(&self.fixed_patterns);
        sets.map(|set| set.rules.len()).sum::<usize>() + self.templates.len()
    }

    /// Warnings found while parsing (a `pattern` without `%u`/`%c`, a `topic` with them).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The rules of one client, for the life of its connection (recompute after a reload).
    /// `username` is `None` for an anonymous client. Costs a map look-up and, for `pattern`
    /// lines with `%u`/`%c`, compiling those few rules for this client.
    pub fn for_client(&self, username: Option<&str>, client_id: &str) -> ClientRules {
        let user = match username {
            Some(name) => self.users.get(name).cloned(),
            None => self.anonymous.clone(),
        };
        // Mosquitto: an identity with a wildcard could widen a pattern; every pattern refuses.
        let dangerous = |text: &str| text.contains(['+', '#']);
        if username.is_some_and(dangerous) || dangerous(client_id) {
            return ClientRules {
                user,
                fixed_patterns: None,
                own_patterns: None,
            };
        }
        let mut own = RuleSet::default();
        for template in &self.templates {
            if template.uses_username && username.is_none() {
                continue;
            }
            let text = template
                .levels
                .iter()
                .map(|level| match level {
                    Template::Text(text) => &**text,
                    Template::Username => username.unwrap_or_default(),
                    Template::ClientId => client_id,
                })
                .collect::<Vec<_>>()
                .join("/");
            match Filter::parse(&text) {
                Ok(filter) => own.push(filter, template.bits),
                // An identity that cannot form a filter (too long): refuse every pattern
                // rather than drop a `deny`.
                Err(_) => {
                    return ClientRules {
                        user,
                        fixed_patterns: None,
                        own_patterns: None,
                    };
                }
            }
        }
        ClientRules {
            user,
            fixed_patterns: self.fixed_patterns.clone(),
            own_patterns: (!own.is_empty()).then(|| Box::new(own)),
        }
    }
}

/// One client's rules: what [`Acl::for_client`] selected and instantiated. Cheap to check;
/// keep it with the connection (or the session) for its life.
#[derive(Debug, Clone, Default)]
pub struct ClientRules {
    /// The client's `user` block, or the anonymous block.
    user: Option<Arc<RuleSet>>,
    fixed_patterns: Option<Arc<RuleSet>>,
    own_patterns: Option<Box<RuleSet>>,
}

impl ClientRules {
    /// Rules that allow nothing.
    pub fn deny_all() -> ClientRules {
        ClientRules::default()
    }

    /// Whether the client may receive a message published to `topic`. No allocation.
    pub fn may_read(&self, topic: &str) -> bool {
        self.allows(topic, READ)
    }

    /// Whether the client may publish to `topic` (PUBLISH, and its will). No allocation.
    pub fn may_write(&self, topic: &str) -> bool {
        self.allows(topic, WRITE)
    }

    fn patterns(&self) -> impl Iterator<Item = &RuleSet> {
        self.fixed_patterns
            .as_deref()
            .into_iter()
            .chain(self.own_patterns.as_deref())
    }

    fn allows(&self, topic: &str, bit: u8) -> bool {
        let wanted = bit | DENY;
        if let Some(user) = &self.user {
            let found = user.matching(topic, wanted);
            if found & DENY != 0 {
                return false;
            }
            if found & bit != 0 {
                return true;
            }
        }
        let found = self
            .patterns()
            .fold(0, |found, set| found | set.matching(topic, wanted));
        found & DENY == 0 && found & bit != 0
    }

    /// What a subscription to `filter` may receive (see the module documentation). A shared
    /// subscription (`$share/group/filter`) is classified by its filter. An invalid filter is
    /// `Denied`.
    pub fn classify(&self, filter: &str) -> FilterAccess {
        let filter = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((_group, filter)) => filter,
                None => return FilterAccess::Denied,
            },
            None => filter,
        };
        let Ok(filter) = Filter::parse(filter) else {
            return FilterAccess::Denied;
        };
        let user = self.user.as_deref();
        let user_reads = user.is_some_and(|set| set.any_intersects(&filter, READ));
        let patterns_read = self.patterns().any(|set| set.any_intersects(&filter, READ));
        // No grant reaches any of its topics.
        if !user_reads && !patterns_read {
            return FilterAccess::Denied;
        }
        // A denial that takes all of it, before any grant can count.
        if user.is_some_and(|set| set.any_covers(&filter, DENY)) {
            return FilterAccess::Denied;
        }
        if !user_reads && self.patterns().any(|set| set.any_covers(&filter, DENY)) {
            return FilterAccess::Denied;
        }
        // One grant takes all of it and no denial before it touches it.
        if !user.is_some_and(|set| set.any_intersects(&filter, DENY)) {
            if user.is_some_and(|set| set.any_covers(&filter, READ)) {
                return FilterAccess::Granted;
            }
            let patterns_deny = self.patterns().any(|set| set.any_intersects(&filter, DENY));
            if !patterns_deny && self.patterns().any(|set| set.any_covers(&filter, READ)) {
                return FilterAccess::Granted;
            }
        }
        FilterAccess::Partial
    }
}
