//! What the projector's last round left, kept in memory for the next: the
//! trail's end and, per user it applied, the user's last audit link and
//! directory row. A round on users seen before then reads neither back, two
//! of a round's round trips, on the path every write waits on.
//!
//! It holds only while the checkpoint is the one that round wrote: a round
//! of another process, or a rebuild, moves the checkpoint, and what is kept
//! is dropped. (Read models are a fold of the events up to their checkpoint,
//! so the same checkpoint means the same rows.)

use std::collections::HashMap;

use crate::audit::{Hash, Link, GENESIS};
use crate::feed::EventPosition;
use crate::fold::{DirectoryRow, TrailEnd};

/// Users kept at most (a few hundred bytes each); past it the next round
/// starts from what it loads.
const MOST_USERS: usize = 50_000;

pub(crate) struct Warm {
    at: EventPosition,
    last_id: i64,
    head: Hash,
    users: HashMap<String, Known>,
}

struct Known {
    link: Link,
    /// None for a user without a directory row (no registration applied).
    row: Option<DirectoryRow>,
}

impl Warm {
    /// Nothing known yet, at `at`: the first round's `learn` sets the
    /// trail's end.
    pub fn at_checkpoint(at: EventPosition) -> Warm {
        Warm {
            at,
            last_id: 0,
            head: GENESIS,
            users: HashMap::new(),
        }
    }

    /// The checkpoint it stands at.
    pub fn at(&self) -> EventPosition {
        self.at
    }

    /// Takes the trail's end and the rows of its users as read from the
    /// tables, or as a round left them.
    pub fn learn(&mut self, trail: TrailEnd, rows: Vec<(String, Option<DirectoryRow>)>) {
        let mut links: HashMap<String, Link> = trail.links.into_iter().collect();
        for (user_id, row) in rows {
            let link = links.remove(&user_id).unwrap_or(Link::START);
            self.users.insert(user_id, Known { link, row });
        }
        self.last_id = trail.last_id;
        self.head = trail.head;
    }

    /// What a round that applied up to `at` left: the trail's end and the
    /// rows of the round's users.
    pub fn after_round(
        mut self,
        at: EventPosition,
        trail: TrailEnd,
        rows: Vec<(String, Option<DirectoryRow>)>,
    ) -> Warm {
        if self.users.len() + rows.len() > MOST_USERS {
            self.users.clear();
        }
        self.learn(trail, rows);
        self.at = at;
        self
    }

    /// Which of `users` it does not know.
    pub fn unknown<'a>(&self, users: &[&'a str]) -> Vec<&'a str> {
        users
            .iter()
            .copied()
            .filter(|user| !self.users.contains_key(*user))
            .collect()
    }

    /// The trail's end and the directory rows of `users`, all known.
    pub fn end_of(&self, users: &[&str]) -> (TrailEnd, Vec<(String, DirectoryRow)>) {
        let mut links = Vec::with_capacity(users.len());
        let mut rows = Vec::with_capacity(users.len());
        for user in users {
            if let Some(known) = self.users.get(*user) {
                links.push((user.to_string(), known.link));
                if let Some(row) = &known.row {
                    rows.push((user.to_string(), row.clone()));
                }
            }
        }
        let trail = TrailEnd {
            last_id: self.last_id,
            head: self.head,
            links,
        };
        (trail, rows)
    }
}
