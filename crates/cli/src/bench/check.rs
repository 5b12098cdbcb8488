//! The delivery checker: what one subscriber saw of one publisher's sequence (loss, duplicates,
//! order), the totals over a run, and the verdict against the promise of the QoS in use.
//! Pure bookkeeping, no I/O, so every rule is unit-tested here.

use tern_codec::QoS;

/// Gaps remembered per stream; beyond this the oldest is forgotten (counted as lost).
const MAX_GAPS: usize = 1_000_000;

/// How one message fitted into its publisher's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next sequence number, or a later one (the numbers skipped are missing for now).
    InOrder,
    /// A number below the highest seen that was missing: delivered out of order.
    Late,
    /// A number already delivered.
    Duplicate,
    /// Below a gap forgotten because of [`MAX_GAPS`]: neither late nor duplicate can be told.
    Unknown,
}

/// One publisher's sequence as one subscriber received it.
///
/// Keeps the highest number seen and the gaps below it, so memory follows the number of gaps,
/// not of messages, and a late arrival can be told from a duplicate exactly.
#[derive(Debug, Clone, Default)]
pub struct StreamCheck {
    /// Highest sequence number seen plus one.
    next: u64,
    received: u64,
    duplicates: u64,
    duplicates_without_dup: u64,
    out_of_order: u64,
    unknown: u64,
    /// Sequence numbers below `next` not received: sorted, disjoint, half-open ranges.
    missing: Vec<(u64, u64)>,
    /// Messages in gaps dropped from `missing` to bound memory; they count as lost.
    forgotten: u64,
    /// Everything below this was in a forgotten gap or before it.
    forgotten_below: u64,
}

impl StreamCheck {
    /// Records the arrival of `seq`; `dup_flag` is the DUP flag of the PUBLISH that carried it.
    pub fn record(&mut self, seq: u64, dup_flag: bool) -> Arrival {
        if seq >= self.next {
            if seq > self.next {
                self.missing.push((self.next, seq));
                if self.missing.len() > MAX_GAPS {
                    let (start, end) = self.missing.remove(0);
                    self.forgotten += end - start;
                    self.forgotten_below = end;
                }
            }
            self.next = seq + 1;
            self.received += 1;
            return Arrival::InOrder;
        }
        let index = self.missing.partition_point(|&(start, _)| start <= seq);
        if index > 0 {
            let (start, end) = self.missing[index - 1];
            if seq < end {
                match (seq == start, seq + 1 == end) {
                    (true, true) => {
                        self.missing.remove(index - 1);
                    }
                    (true, false) => self.missing[index - 1].0 = seq + 1,
                    (false, true) => self.missing[index - 1].1 = seq,
                    (false, false) => {
                        self.missing[index - 1].1 = seq;
                        self.missing.insert(index, (seq + 1, end));
                    }
                }
                self.received += 1;
                self.out_of_order += 1;
                return Arrival::Late;
            }
        }
        if seq < self.forgotten_below {
            self.unknown += 1;
            return Arrival::Unknown;
        }
        self.duplicates += 1;
        if !dup_flag {
            self.duplicates_without_dup += 1;
        }
        Arrival::Duplicate
    }

    /// Highest sequence number seen plus one: how far the subscriber has got.
    pub fn progress(&self) -> u64 {
        self.next
    }

    /// Adds this stream to `totals`, given that its publisher sent `sent` messages (0..sent).
    pub fn add_to(&self, sent: u64, totals: &mut DeliveryCounts) {
        let gaps: u64 = self.missing.iter().map(|&(start, end)| end - start).sum();
        totals.expected += sent;
        totals.received += self.received;
        totals.lost += gaps + self.forgotten + sent.saturating_sub(self.next);
        totals.duplicates += self.duplicates;
        totals.duplicates_without_dup += self.duplicates_without_dup;
        totals.out_of_order += self.out_of_order;
        totals.unclassified += self.unknown;
        // Numbers the publisher never sent: not ours, whatever they are.
        totals.unexpected += self.next.saturating_sub(sent);
    }
}

/// Totals of a run's delivery, over every (publisher, subscriber) stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Messages published.
    pub sent: u64,
    /// Deliveries expected: each message once to each subscriber of its topic.
    pub expected: u64,
    /// Distinct messages delivered (duplicates not counted).
    pub received: u64,
    pub lost: u64,
    /// Messages delivered again after they had been delivered.
    pub duplicates: u64,
    /// Of those, the ones whose PUBLISH did not carry the DUP flag.
    pub duplicates_without_dup: u64,
    /// Messages delivered after a later message of the same publisher.
    pub out_of_order: u64,
    /// Arrivals below a forgotten gap (only after a million gaps in one stream).
    pub unclassified: u64,
    /// Payloads that are not bench payloads, or not of the run's size.
    pub malformed: u64,
    /// Bench payloads from a publisher the subscriber does not listen to, or numbers never sent.
    pub unexpected: u64,
    /// QoS 1/2 publishes the broker never finished acknowledging.
    pub unacked: u64,
    /// MQTT 5 acknowledgements with an error reason code.
    pub rejected: u64,
    /// QoS 2 PUBLISH packets with the DUP flag whose packet id still awaited PUBREL: resent,
    /// answered with PUBREC and not delivered again [MQTT-4.3.3].
    pub qos2_resent: u64,
    /// QoS 2 PUBLISH packets without DUP whose packet id still awaited PUBREL: the broker reused
    /// an identifier in flight. The receiver must take them for duplicates (not deliver them), so
    /// whatever they carried is lost.
    pub qos2_id_reused: u64,
    /// QoS 2 deliveries whose PUBREL had not come when the subscriber disconnected.
    pub qos2_unreleased: u64,
}

/// PASS or FAIL, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub pass: bool,
    /// Each broken promise, in words.
    pub failures: Vec<String>,
    /// Things worth knowing that break no promise (QoS 0 loss, flagged QoS 1 duplicates).
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn new() -> Verdict {
        Verdict {
            pass: true,
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn fail(&mut self, why: String) {
        self.pass = false;
        self.failures.push(why);
    }

    pub fn note(&mut self, what: String) {
        self.notes.push(what);
    }
}

/// Judges a run's delivery against the promise of `qos` (the QoS of publish and subscription).
///
/// Every QoS: order per publisher, no foreign or malformed payload, something delivered.
/// QoS 0 may lose (noted) but not duplicate. QoS 1 must not lose; a duplicate is allowed only
/// with the DUP flag (noted). QoS 2: no loss, no duplicate, and every publish acknowledged.
pub fn judge(qos: QoS, counts: &DeliveryCounts, verdict: &mut Verdict) {
    if counts.expected > 0 && counts.received == 0 {
        verdict.fail(format!(
            "nothing delivered of {} expected deliveries",
            counts.expected
        ));
    }
    if counts.out_of_order > 0 {
        verdict.fail(format!(
            "{} messages delivered out of order (order per publisher must hold at every QoS)",
            counts.out_of_order
        ));
    }
    if counts.malformed > 0 {
        verdict.fail(format!("{} malformed payloads", counts.malformed));
    }
    if counts.unexpected > 0 {
        verdict.fail(format!(
            "{} messages from a publisher or sequence number never sent to that subscriber",
            counts.unexpected
        ));
    }
    if counts.unclassified > 0 {
        verdict.note(format!(
            "{} arrivals below forgotten gaps could not be classified",
            counts.unclassified
        ));
    }
    match qos {
        QoS::AtMostOnce => {
            if counts.lost > 0 {
                verdict.note(format!(
                    "QoS 0: {} of {} deliveries lost ({:.3}%), allowed at QoS 0",
                    counts.lost,
                    counts.expected,
                    percent(counts.lost, counts.expected)
                ));
            }
            if counts.duplicates > 0 {
                verdict.fail(format!(
                    "QoS 0: {} duplicates (at most once)",
                    counts.duplicates
                ));
            }
        }
        QoS::AtLeastOnce => {
            if counts.lost > 0 {
                verdict.fail(format!(
                    "QoS 1: {} of {} deliveries lost",
                    counts.lost, counts.expected
                ));
            }
            if counts.duplicates_without_dup > 0 {
                verdict.fail(format!(
                    "QoS 1: {} duplicates without the DUP flag",
                    counts.duplicates_without_dup
                ));
            }
            let flagged = counts.duplicates - counts.duplicates_without_dup;
            if flagged > 0 {
                verdict.note(format!(
                    "QoS 1: {flagged} duplicates with the DUP flag, allowed"
                ));
            }
        }
        QoS::ExactlyOnce => {
            if counts.lost > 0 {
                verdict.fail(format!(
                    "QoS 2: {} of {} deliveries lost",
                    counts.lost, counts.expected
                ));
            }
            if counts.duplicates > 0 {
                verdict.fail(format!("QoS 2: {} duplicates", counts.duplicates));
            }
        }
    }
    if qos != QoS::AtMostOnce {
        if counts.unacked > 0 {
            verdict.fail(format!(
                "{} publishes never acknowledged by the broker",
                counts.unacked
            ));
        }
        if counts.rejected > 0 {
            verdict.fail(format!(
                "{} publishes refused with an error reason code",
                counts.rejected
            ));
        }
    }
    if counts.qos2_resent > 0 {
        verdict.note(format!(
            "{} QoS 2 PUBLISH packets resent (DUP) before PUBREL, not delivered twice",
            counts.qos2_resent
        ));
    }
    if counts.qos2_unreleased > 0 {
        verdict.note(format!(
            "{} QoS 2 deliveries still awaited PUBREL at the end",
            counts.qos2_unreleased
        ));
    }
    if counts.qos2_id_reused > 0 {
        verdict.fail(format!(
            "{} QoS 2 PUBLISH packets (no DUP) reused a packet id still awaiting PUBREL: taken \
             for duplicates as [MQTT-4.3.3] requires, so their messages are lost",
            counts.qos2_id_reused
        ));
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(arrivals: &[(u64, bool)]) -> StreamCheck {
        let mut check = StreamCheck::default();
        for &(seq, dup) in arrivals {
            check.record(seq, dup);
        }
        check
    }

    fn totals(check: &StreamCheck, sent: u64) -> DeliveryCounts {
        let mut counts = DeliveryCounts {
            sent,
            ..DeliveryCounts::default()
        };
        check.add_to(sent, &mut counts);
        counts
    }

    fn verdict(qos: QoS, counts: &DeliveryCounts) -> Verdict {
        let mut verdict = Verdict::new();
        judge(qos, counts, &mut verdict);
        verdict
    }

    #[test]
    fn a_perfect_stream() {
        let check = stream(&[(0, false), (1, false), (2, false), (3, false)]);
        let counts = totals(&check, 4);
        assert_eq!(counts.received, 4);
        assert_eq!(counts.lost, 0);
        assert_eq!(counts.duplicates, 0);
        assert_eq!(counts.out_of_order, 0);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let v = verdict(qos, &counts);
            assert!(v.pass, "{qos:?}: {:?}", v.failures);
            assert!(v.notes.is_empty());
        }
    }

    #[test]
    fn gaps_and_the_tail_count_as_lost() {
        let check = stream(&[(0, false), (3, false), (4, false), (7, false)]);
        assert_eq!(check.progress(), 8);
        // 1, 2, 5, 6 in gaps; 8 and 9 never arrived.
        let counts = totals(&check, 10);
        assert_eq!(counts.lost, 6);
        assert_eq!(counts.received, 4);
        assert_eq!(counts.expected, 10);
    }

    #[test]
    fn a_late_arrival_fills_its_gap_and_counts_out_of_order() {
        let mut check = stream(&[(0, false), (5, false)]);
        assert_eq!(check.record(2, false), Arrival::Late);
        assert_eq!(check.record(1, false), Arrival::Late);
        assert_eq!(check.record(4, false), Arrival::Late);
        assert_eq!(check.record(3, false), Arrival::Late);
        assert_eq!(check.record(3, false), Arrival::Duplicate);
        let counts = totals(&check, 6);
        assert_eq!(counts.lost, 0);
        assert_eq!(counts.received, 6);
        assert_eq!(counts.out_of_order, 4);
        assert_eq!(counts.duplicates, 1);
    }

    #[test]
    fn a_repeat_is_a_duplicate_not_a_reorder() {
        let mut check = stream(&[(0, false), (1, false), (2, false)]);
        assert_eq!(check.record(1, true), Arrival::Duplicate);
        assert_eq!(check.record(2, false), Arrival::Duplicate);
        let counts = totals(&check, 3);
        assert_eq!(counts.duplicates, 2);
        assert_eq!(counts.duplicates_without_dup, 1);
        assert_eq!(counts.out_of_order, 0);
        assert_eq!(counts.received, 3);
    }

    #[test]
    fn numbers_never_sent_are_unexpected() {
        let check = stream(&[(0, false), (1, false), (5, false)]);
        let counts = totals(&check, 2);
        assert_eq!(counts.unexpected, 4);
        assert!(!verdict(QoS::AtMostOnce, &counts).pass);
    }

    #[test]
    fn qos0_may_lose_but_not_duplicate() {
        let lossy = totals(&stream(&[(0, false), (2, false)]), 4);
        let v = verdict(QoS::AtMostOnce, &lossy);
        assert!(v.pass, "{:?}", v.failures);
        assert_eq!(v.notes.len(), 1);
        assert!(v.notes[0].contains("2 of 4"), "{:?}", v.notes);

        let duplicated = totals(&stream(&[(0, false), (0, false)]), 1);
        assert!(!verdict(QoS::AtMostOnce, &duplicated).pass);
    }

    #[test]
    fn qos1_must_not_lose_and_flags_its_duplicates() {
        let lossy = totals(&stream(&[(0, false), (2, false)]), 3);
        assert!(!verdict(QoS::AtLeastOnce, &lossy).pass);

        let flagged = totals(&stream(&[(0, false), (1, false), (1, true)]), 2);
        let v = verdict(QoS::AtLeastOnce, &flagged);
        assert!(v.pass, "{:?}", v.failures);
        assert_eq!(v.notes.len(), 1);

        let unflagged = totals(&stream(&[(0, false), (1, false), (1, false)]), 2);
        assert!(!verdict(QoS::AtLeastOnce, &unflagged).pass);
    }

    #[test]
    fn qos2_allows_neither_loss_nor_duplicates() {
        let flagged = totals(&stream(&[(0, false), (0, true)]), 1);
        assert!(!verdict(QoS::ExactlyOnce, &flagged).pass);
        let lossy = totals(&stream(&[(1, false)]), 2);
        assert!(!verdict(QoS::ExactlyOnce, &lossy).pass);
        let unacked = DeliveryCounts {
            sent: 1,
            expected: 1,
            received: 1,
            unacked: 1,
            ..DeliveryCounts::default()
        };
        assert!(!verdict(QoS::ExactlyOnce, &unacked).pass);
        assert!(verdict(QoS::AtMostOnce, &unacked).pass);
    }

    #[test]
    fn order_must_hold_at_every_qos() {
        let reordered = totals(&stream(&[(1, false), (0, false)]), 2);
        assert_eq!(reordered.lost, 0);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert!(!verdict(qos, &reordered).pass, "{qos:?}");
        }
    }

    #[test]
    fn nothing_delivered_fails_even_at_qos0() {
        let counts = totals(&StreamCheck::default(), 10);
        assert_eq!(counts.lost, 10);
        assert!(!verdict(QoS::AtMostOnce, &counts).pass);
    }

    #[test]
    fn qos2_packet_id_reuse_fails_but_resends_do_not() {
        let base = DeliveryCounts {
            sent: 1,
            expected: 1,
            received: 1,
            ..DeliveryCounts::default()
        };
        let resent = DeliveryCounts {
            qos2_resent: 3,
            ..base.clone()
        };
        let v = verdict(QoS::ExactlyOnce, &resent);
        assert!(v.pass, "{:?}", v.failures);
        assert_eq!(v.notes.len(), 1);
        let reused = DeliveryCounts {
            qos2_id_reused: 1,
            ..base
        };
        assert!(!verdict(QoS::ExactlyOnce, &reused).pass);
    }

    #[test]
    fn foreign_payloads_fail() {
        let counts = DeliveryCounts {
            sent: 1,
            expected: 1,
            received: 1,
            malformed: 1,
            ..DeliveryCounts::default()
        };
        assert!(!verdict(QoS::AtMostOnce, &counts).pass);
    }

    #[test]
    fn gap_ranges_split_and_merge_correctly() {
        let mut check = stream(&[(0, false), (10, false)]);
        // Fill the middle of the gap 1..10, then both ends.
        assert_eq!(check.record(5, false), Arrival::Late);
        assert_eq!(check.missing, vec![(1, 5), (6, 10)]);
        assert_eq!(check.record(1, false), Arrival::Late);
        assert_eq!(check.record(9, false), Arrival::Late);
        assert_eq!(check.missing, vec![(2, 5), (6, 9)]);
        assert_eq!(check.record(5, false), Arrival::Duplicate);
        assert_eq!(check.record(10, false), Arrival::Duplicate);
        let counts = totals(&check, 11);
        assert_eq!(counts.lost, 6);
        assert_eq!(counts.received, 5);
    }
}
