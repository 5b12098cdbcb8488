//! The routes the subscription index reports to a cluster (issue 16: "routes proposed only when
//! a node gets its first local subscriber for a filter or loses its last"; "route counts never
//! negative"): over random sequences of subscribes and unsubscribes, the routes announced
//! (won minus lost) are always exactly the index's routes, none is won twice or lost before it
//! was won, and `routes()` lists what a plain model holds.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tern_broker::subscriptions::{IndexEntry, SubscriptionIndex};

#[derive(Debug, Clone)]
struct Sub(u32);

impl IndexEntry for Sub {
    fn key(&self) -> usize {
        self.0 as usize
    }
}

/// Filters with their route: `(filter, group)`. Plain and shared ones on the same filter, a
/// root `#`, empty levels.
const FILTERS: [&str; 8] = [
    "a/+/c",
    "a/#",
    "#",
    "$share/g/a/#",
    "$share/h/a/#",
    "$share/g/+/x",
    "/x/",
    "a/b/c",
];

/// A route: `(filter, group)`.
type Route = (String, Option<String>);

fn route(filter: &str) -> Route {
    match filter.strip_prefix("$share/") {
        Some(rest) => {
            let (group, plain) = rest.split_once('/').unwrap();
            (plain.to_owned(), Some(group.to_owned()))
        }
        None => (filter.to_owned(), None),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Issue 16: the announced routes follow the index exactly.
    #[test]
    fn announced_routes_are_the_index_routes(
        ops in prop::collection::vec((any::<bool>(), 0..FILTERS.len(), 0..6u32), 1..300)
    ) {
        let mut index = SubscriptionIndex::default();
        // Subscribers per route in a plain model, and the routes announced so far.
        let mut model: BTreeMap<Route, BTreeSet<(usize, u32)>> = BTreeMap::new();
        let mut announced: BTreeSet<Route> = BTreeSet::new();
        for (subscribe, filter, key) in ops {
            let name = FILTERS[filter];
            let route = route(name);
            if subscribe {
                let inserted = index.insert_route(name, Sub(key));
                let members = model.entry(route.clone()).or_default();
                prop_assert_eq!(inserted.first, members.is_empty());
                prop_assert_eq!(inserted.replaced, !members.insert((filter, key)));
                if inserted.first {
                    prop_assert!(announced.insert(route.clone()), "won twice: {:?}", route);
                }
            } else {
                let (removed, last) = index.remove_route(name, &Sub(key));
                let members = model.entry(route.clone()).or_default();
                prop_assert_eq!(removed.is_some(), members.remove(&(filter, key)));
                prop_assert_eq!(last, removed.is_some() && members.is_empty());
                if last {
                    prop_assert!(announced.remove(&route), "lost before won: {:?}", route);
                }
            }
            let held: BTreeSet<Route> = model
                .iter()
                .filter(|(_, members)| !members.is_empty())
                .map(|(route, _)| route.clone())
                .collect();
            prop_assert_eq!(&announced, &held);
            let (plain, shared) = index.routes();
            let listed: BTreeSet<Route> = plain
                .into_iter()
                .map(|filter| (filter, None))
                .chain(shared.into_iter().map(|(group, filter)| (filter, Some(group))))
                .collect();
            prop_assert_eq!(&listed, &held);
        }
    }
}
