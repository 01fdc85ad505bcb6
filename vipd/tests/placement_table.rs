//! Table tests for `vipd::placement`: each case is a small cluster written in a compact text
//! notation, with the moves and the final assignment that the rules of the module demand.
//!
//! Notation (every case shares `NOW_MS` and `HOLD_DOWN_MS`):
//! * nodes: `n3` is available since 0 (settled); `n3@95000` became available at 95 000 ms;
//!   `n3!unhealthy`, `!disconnected`, `!disabled`, `!banned` clear or set that flag.
//! * vips: `v2` has weight 1 and may go anywhere; `v2*3` has weight 3; `v2{n1,n3}` may only
//!   go to n1 or n3 (`{}`: nowhere); `v2^` was placed by an operator (`ClusterView::pinned`).
//! * owners and assignments: `v2=n3`; `v2=-` means unhosted.
//! * moves are written as `Move`'s `Display`: `v2: n2 -> n3 (owner-unavailable)`.

// The parsing helpers are test code outside `#[test]` functions, which clippy.toml's test
// exemption does not reach; a malformed table entry should fail loudly, which is what unwrap does.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use vipd::placement::{
    Assignment, ClusterView, NodeId, NodeState, VipId, VipSpec, place, violations,
};

const NOW_MS: u64 = 100_000;
const HOLD_DOWN_MS: u64 = 30_000;

struct Case {
    name: &'static str,
    nodes: &'static str,
    vips: &'static str,
    owners: &'static str,
    moves: &'static [&'static str],
    after: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "an operator's move that unbalances is answered by moving another VIP",
        nodes: "n1 n2 n3",
        vips: "v1^ v2 v3 v4",
        owners: "v1=n3 v2=n3 v3=n1 v4=n1",
        moves: &["v2: n3 -> n2 (rebalance)"],
        after: "v1=n3 v2=n2 v3=n1 v4=n1",
    },
    Case {
        name: "without the operator's mark the lowest VIP would move",
        nodes: "n1 n2 n3",
        vips: "v1 v2 v3 v4",
        owners: "v1=n3 v2=n3 v3=n1 v4=n1",
        moves: &["v1: n3 -> n2 (rebalance)"],
        after: "v1=n2 v2=n3 v3=n1 v4=n1",
    },
    Case {
        name: "fresh cluster: 3 nodes, 4 VIPs, nothing hosted yet",
        nodes: "n1 n2 n3",
        vips: "v1 v2 v3 v4",
        owners: "",
        moves: &[
            "v1: - -> n1 (unhosted)",
            "v2: - -> n2 (unhosted)",
            "v3: - -> n3 (unhosted)",
            "v4: - -> n1 (unhosted)",
        ],
        after: "v1=n1 v2=n2 v3=n3 v4=n1",
    },
    Case {
        name: "fresh cluster where every node is still in hold-down: VIPs are hosted anyway",
        nodes: "n1@90000 n2@95000 n3@99000",
        vips: "v1 v2 v3 v4",
        owners: "",
        moves: &[
            "v1: - -> n1 (unhosted)",
            "v2: - -> n2 (unhosted)",
            "v3: - -> n3 (unhosted)",
            "v4: - -> n1 (unhosted)",
        ],
        after: "v1=n1 v2=n2 v3=n3 v4=n1",
    },
    Case {
        name: "balanced input: nothing moves",
        nodes: "n1 n2 n3",
        vips: "v1 v2 v3 v4",
        owners: "v1=n3 v2=n1 v3=n3 v4=n2",
        moves: &[],
        after: "v1=n3 v2=n1 v3=n3 v4=n2",
    },
    Case {
        name: "node dies: only its VIP moves, to the least loaded node",
        nodes: "n1 n2!unhealthy n3",
        vips: "v1 v2 v3 v4",
        owners: "v1=n1 v2=n2 v3=n3 v4=n1",
        moves: &["v2: n2 -> n3 (owner-unavailable)"],
        after: "v1=n1 v2=n3 v3=n3 v4=n1",
    },
    Case {
        name: "node loses the quorum: same as dying",
        nodes: "n1 n2 n3!disconnected",
        vips: "v1 v2 v3 v4 v5 v6",
        owners: "v1=n1 v2=n2 v3=n3 v4=n1 v5=n2 v6=n3",
        moves: &[
            "v3: n3 -> n1 (owner-unavailable)",
            "v6: n3 -> n2 (owner-unavailable)",
        ],
        after: "v1=n1 v2=n2 v3=n1 v4=n1 v5=n2 v6=n2",
    },
    Case {
        name: "node returns within its hold-down: no failback",
        nodes: "n1 n2 n3@80000",
        vips: "v1 v2 v3 v4 v5 v6",
        owners: "v1=n1 v2=n2 v3=n1 v4=n2 v5=n1 v6=n2",
        moves: &[],
        after: "v1=n1 v2=n2 v3=n1 v4=n2 v5=n1 v6=n2",
    },
    Case {
        name: "node returns and its hold-down has ended: exactly two rebalance moves",
        nodes: "n1 n2 n3@70000",
        vips: "v1 v2 v3 v4 v5 v6",
        owners: "v1=n1 v2=n2 v3=n1 v4=n2 v5=n1 v6=n2",
        moves: &["v1: n1 -> n3 (rebalance)", "v2: n2 -> n3 (rebalance)"],
        after: "v1=n3 v2=n3 v3=n1 v4=n2 v5=n1 v6=n2",
    },
    Case {
        name: "a VIP that must move prefers a settled node to a lighter one in hold-down",
        nodes: "n1 n2@90000",
        vips: "v1 v2{n2}",
        owners: "",
        moves: &["v1: - -> n1 (unhosted)", "v2: - -> n2 (unhosted)"],
        after: "v1=n1 v2=n2",
    },
    Case {
        name: "disabled node gives up its VIPs",
        nodes: "n1 n2!disabled n3",
        vips: "v1 v2 v3",
        owners: "v1=n1 v2=n2 v3=n3",
        moves: &["v2: n2 -> n1 (owner-unavailable)"],
        after: "v1=n1 v2=n1 v3=n3",
    },
    Case {
        name: "banned node gives up its VIPs",
        nodes: "n1 n2 n3!banned",
        vips: "v1 v2 v3",
        owners: "v1=n1 v2=n2 v3=n3",
        moves: &["v3: n3 -> n1 (owner-unavailable)"],
        after: "v1=n1 v2=n2 v3=n1",
    },
    Case {
        name: "no node may host: every VIP is unhosted",
        nodes: "n1!disabled n2!disconnected n3!banned",
        vips: "v1 v2 v3 v4",
        owners: "v1=n1 v2=n2 v3=n3",
        moves: &[
            "v1: n1 -> - (no-eligible-node)",
            "v2: n2 -> - (no-eligible-node)",
            "v3: n3 -> - (no-eligible-node)",
        ],
        after: "v1=- v2=- v3=- v4=-",
    },
    Case {
        name: "every node unhealthy: they keep what they host, the unhosted go to the least loaded",
        nodes: "n1!unhealthy n2!unhealthy n3!unhealthy",
        vips: "v1 v2 v3 v4 v5",
        owners: "v1=n1 v2=n1 v3=n2",
        moves: &["v4: - -> n3 (unhosted)", "v5: - -> n2 (unhosted)"],
        after: "v1=n1 v2=n1 v3=n2 v4=n3 v5=n2",
    },
    Case {
        name: "an unhealthy node is the last resort; disconnected and banned nodes are not",
        nodes: "n1!unhealthy n2!disconnected n3!banned",
        vips: "v1 v2 v3 v4",
        owners: "v1=n1 v2=n2 v3=n3",
        moves: &[
            "v2: n2 -> n1 (owner-unavailable)",
            "v3: n3 -> n1 (owner-unavailable)",
            "v4: - -> n1 (unhosted)",
        ],
        after: "v1=n1 v2=n1 v3=n1 v4=n1",
    },
    Case {
        name: "a healthy node, even in hold-down, takes every VIP from the last-resort host",
        nodes: "n1@95000 n2!unhealthy",
        vips: "v1 v2",
        owners: "v1=n2 v2=n2",
        moves: &[
            "v1: n2 -> n1 (owner-unavailable)",
            "v2: n2 -> n1 (owner-unavailable)",
        ],
        after: "v1=n1 v2=n1",
    },
    Case {
        name: "a VIP only node 3 may host goes to node 3 however loaded it is",
        nodes: "n1 n2 n3",
        vips: "v1{n3} v2 v3",
        owners: "v2=n3 v3=n3",
        moves: &[
            "v1: - -> n3 (unhosted)",
            "v2: n3 -> n1 (rebalance)",
            "v3: n3 -> n2 (rebalance)",
        ],
        after: "v1=n3 v2=n1 v3=n2",
    },
    Case {
        name: "a VIP only node 3 may host stays on unhealthy node 3: no healthy node may take it",
        nodes: "n1 n2 n3!unhealthy",
        vips: "v1{n3} v2 v3",
        owners: "v1=n3 v2=n1 v3=n2",
        moves: &[],
        after: "v1=n3 v2=n1 v3=n2",
    },
    Case {
        name: "a VIP only node 3 may host is unhosted while node 3 is disconnected",
        nodes: "n1 n2 n3!disconnected",
        vips: "v1{n3} v2 v3",
        owners: "v1=n3 v2=n1 v3=n2",
        moves: &["v1: n3 -> - (no-eligible-node)"],
        after: "v1=- v2=n1 v3=n2",
    },
    Case {
        name: "an unhealthy node hosts nothing while a healthy node may",
        nodes: "n1 n2!unhealthy",
        vips: "v1 v2{n1,n2} v3{n2}",
        owners: "v1=n2 v2=n2 v3=n2",
        moves: &[
            "v1: n2 -> n1 (owner-unavailable)",
            "v2: n2 -> n1 (owner-unavailable)",
        ],
        after: "v1=n1 v2=n1 v3=n2",
    },
    Case {
        name: "an owner taken off the node list hands the VIP to a listed node",
        nodes: "n1 n2 n3",
        vips: "v1{n2,n3} v2",
        owners: "v1=n1 v2=n2",
        moves: &["v1: n1 -> n3 (owner-ineligible)"],
        after: "v1=n3 v2=n2",
    },
    Case {
        name: "node lists limit the balance: n1 may carry more when nothing else can go there",
        nodes: "n1 n2",
        vips: "v1{n1} v2{n1} v3{n1} v4",
        owners: "v1=n1 v2=n1 v3=n1 v4=n1",
        moves: &["v4: n1 -> n2 (rebalance)"],
        after: "v1=n1 v2=n1 v3=n1 v4=n2",
    },
    Case {
        name: "weights: a weight-3 VIP balances three weight-1 VIPs",
        nodes: "n1 n2",
        vips: "v1*3 v2 v3 v4",
        owners: "",
        moves: &[
            "v1: - -> n1 (unhosted)",
            "v2: - -> n2 (unhosted)",
            "v3: - -> n2 (unhosted)",
            "v4: - -> n2 (unhosted)",
        ],
        after: "v1=n1 v2=n2 v3=n2 v4=n2",
    },
    Case {
        name: "weights: from 6-0 one move of the heavy VIP balances, not three light ones",
        nodes: "n1 n2",
        vips: "v1 v2 v3 v4*3",
        owners: "v1=n1 v2=n1 v3=n1 v4=n1",
        moves: &["v4: n1 -> n2 (rebalance)"],
        after: "v1=n1 v2=n1 v3=n1 v4=n2",
    },
    Case {
        name: "weights: 3 against 2 is balanced, since no single move helps",
        nodes: "n1 n2",
        vips: "v1*3 v2 v3",
        owners: "v1=n1 v2=n2 v3=n2",
        moves: &[],
        after: "v1=n1 v2=n2 v3=n2",
    },
    Case {
        name: "unknown owners, unknown eligible nodes and unconfigured VIPs",
        nodes: "n1 n2",
        vips: "v1 v2{n7} v3",
        owners: "v1=n9 v3=n2 v8=n1",
        moves: &[
            "v1: n9 -> n1 (owner-unavailable)",
            "v8: n1 -> - (unconfigured)",
        ],
        after: "v1=n1 v2=- v3=n2",
    },
    Case {
        name: "no nodes at all",
        nodes: "",
        vips: "v1 v2",
        owners: "v1=n1",
        moves: &["v1: n1 -> - (no-eligible-node)"],
        after: "v1=- v2=-",
    },
    Case {
        name: "weight 0 counts as 1",
        nodes: "n1 n2",
        vips: "v1*0 v2*0 v3*0",
        owners: "v1=n1 v2=n1 v3=n1",
        moves: &["v1: n1 -> n2 (rebalance)"],
        after: "v1=n2 v2=n1 v3=n1",
    },
];

#[test]
fn placement_table() {
    let mut failures = Vec::new();
    for case in CASES {
        let view = parse_view(case.nodes, case.vips);
        let owners = parse_owners(case.owners);
        let placement = place(&view, &owners);
        let moves: Vec<String> = placement.moves.iter().map(ToString::to_string).collect();
        let expected_moves: Vec<String> = case.moves.iter().map(|m| (*m).to_owned()).collect();
        let after = render_assignment(&placement.assignment);
        if moves != expected_moves || after != case.after {
            failures.push(format!(
                "{}\n  moves    {moves:?}\n  expected {expected_moves:?}\n  after    {after}\n  \
                 expected {}",
                case.name, case.after
            ));
            continue;
        }
        let broken = violations(&view, &placement.assignment);
        if !broken.is_empty() {
            failures.push(format!(
                "{}: result breaks the rules: {broken:?}",
                case.name
            ));
        }
        if !place(&view, &placement.owners()).moves.is_empty() {
            failures.push(format!("{}: placing again moves VIPs", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hold_down_end_is_reported() {
    let view = parse_view("n1 n2@80000 n3@95000 n4@99000!unhealthy", "v1");
    let placement = place(&view, &BTreeMap::new());
    assert_eq!(placement.hold_down_ends_at_ms, Some(80_000 + HOLD_DOWN_MS));

    let settled = parse_view("n1 n2", "v1");
    assert_eq!(place(&settled, &BTreeMap::new()).hold_down_ends_at_ms, None);
}

#[test]
fn node_flags_fold_into_may_host() {
    let available = NodeState::available_since(0);
    assert!(available.may_host());
    assert!(
        !NodeState {
            healthy: false,
            ..available
        }
        .may_host()
    );
    assert!(
        !NodeState {
            connected: false,
            ..available
        }
        .may_host()
    );
    assert!(
        !NodeState {
            disabled: true,
            ..available
        }
        .may_host()
    );
    assert!(
        !NodeState {
            banned: true,
            ..available
        }
        .may_host()
    );
}

fn parse_view(nodes: &str, vips: &str) -> ClusterView {
    let mut view = ClusterView {
        now_ms: NOW_MS,
        hold_down_ms: HOLD_DOWN_MS,
        ..ClusterView::default()
    };
    for token in nodes.split_whitespace() {
        let mut parts = token.split('!');
        let head = parts.next().unwrap();
        let (id, since) = match head.split_once('@') {
            Some((id, since)) => (id, since.parse().unwrap()),
            None => (head, 0),
        };
        let mut state = NodeState::available_since(since);
        for flag in parts {
            match flag {
                "unhealthy" => state.healthy = false,
                "disconnected" => state.connected = false,
                "disabled" => state.disabled = true,
                "banned" => state.banned = true,
                other => panic!("unknown node flag {other:?} in {token:?}"),
            }
        }
        view.nodes.insert(parse_node(id), state);
    }
    for token in vips.split_whitespace() {
        let (token, pinned) = match token.strip_suffix('^') {
            Some(token) => (token, true),
            None => (token, false),
        };
        let (head, eligible) = match token.split_once('{') {
            Some((head, list)) => {
                let list = list.strip_suffix('}').unwrap();
                let eligible: BTreeSet<NodeId> = list
                    .split(',')
                    .filter(|name| !name.is_empty())
                    .map(parse_node)
                    .collect();
                (head, Some(eligible))
            }
            None => (token, None),
        };
        let (id, weight) = match head.split_once('*') {
            Some((id, weight)) => (id, weight.parse().unwrap()),
            None => (head, 1),
        };
        view.vips
            .insert(parse_vip(id), VipSpec { eligible, weight });
        if pinned {
            view.pinned.insert(parse_vip(id));
        }
    }
    view
}

fn parse_owners(owners: &str) -> BTreeMap<VipId, NodeId> {
    owners
        .split_whitespace()
        .map(|pair| {
            let (vip, node) = pair.split_once('=').unwrap();
            (parse_vip(vip), parse_node(node))
        })
        .collect()
}

fn render_assignment(assignment: &Assignment) -> String {
    let pairs: Vec<String> = assignment
        .iter()
        .map(|(vip, node)| match node {
            Some(node) => format!("{vip}={node}"),
            None => format!("{vip}=-"),
        })
        .collect();
    pairs.join(" ")
}

fn parse_node(name: &str) -> NodeId {
    NodeId(name.strip_prefix('n').unwrap().parse().unwrap())
}

fn parse_vip(name: &str) -> VipId {
    VipId(name.strip_prefix('v').unwrap().parse().unwrap())
}
