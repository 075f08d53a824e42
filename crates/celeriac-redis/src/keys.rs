//! Key names: kombu's layout (`celery-protocol.md` §4.1) and celeriac's
//! own keys beside it, all under the optional `global_keyprefix`.
//!
//! | key | type | who reads it |
//! |---|---|---|
//! | `<queue>`, `<queue><sep><step>` | list | kombu and celeriac: the queue, one list per priority step |
//! | `_kombu.binding.<queue>`, `_kombu.binding_permanent.<queue>` | set | kombu's exchange table for the anonymous route |
//! | `unacked` | hash | tag → `[envelope, exchange, routing_key]` |
//! | `unacked_index` | zset | tag → lease end − visibility timeout |
//! | `unacked_mutex` | string | kombu's restore lock |
//! | `celeriac.token` | string | the fencing-token counter |
//! | `celeriac.deliveries.<delivery tag>` | string | deliveries of a message that came back, expiring a week after its last count |
//! | `celeriac.delayed.<queue>` | zset | tag → eta (unix seconds) of held delayed messages |
//! | `celeriac.wake.<queue>` | list | a signal to waiting fetches: a delayed message was published |
//! | `celeriac.armed.<id>` | string | the arm of a claim queued behind a blocked `BLMOVE` (`arm.rs`); deleted when the claim runs or is disarmed, expiring otherwise |
//! | `celeriac.dead` | list | dead letters, oldest first |
//! | `celeriac.revoked` | zset | task id → when the revocation is forgotten |
//! | `celeriac.queues` | set | queue names published or consumed through celeriac |
//!
//! The tags in `unacked`: a Python worker files what it claims under the
//! envelope's delivery tag, as kombu does; celeriac files each attempt
//! under a tag of its own, `celeriac:<token>`, which is also its fencing
//! token (`scripts/common.lua` says how); a message waiting for its eta
//! stays under the tag it was published or deferred with.

use crate::config::Config;

/// The keys of one broker (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `global_keyprefix`.
    pub prefix: String,
    /// Separator between a queue and its step.
    pub sep: String,
    /// Priority steps, ascending, holding 0.
    pub steps: Vec<u8>,
    /// The steps as the scripts read them: `"0,3,6,9"`.
    pub steps_csv: String,
    /// kombu's `unacked` hash.
    pub unacked: String,
    /// kombu's `unacked_index` zset.
    pub unacked_index: String,
    /// kombu's restore lock.
    pub unacked_mutex: String,
    /// celeriac's token counter.
    pub token_seq: String,
    /// celeriac's dead letters.
    pub dead: String,
    /// celeriac's revoked ids.
    pub revoked: String,
    /// celeriac's known queues.
    pub queues: String,
}

impl Keys {
    /// Returns the keys for a configuration.
    pub fn new(cfg: &Config) -> Self {
        let p = &cfg.global_keyprefix;
        let steps = cfg.priority_steps.clone();
        let steps_csv = steps
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Keys {
            prefix: p.clone(),
            sep: cfg.sep.clone(),
            steps,
            steps_csv,
            unacked: format!("{p}{}", cfg.unacked_key),
            unacked_index: format!("{p}{}", cfg.unacked_index_key),
            unacked_mutex: format!("{p}{}", cfg.unacked_mutex_key),
            token_seq: format!("{p}celeriac.token"),
            dead: format!("{p}celeriac.dead"),
            revoked: format!("{p}celeriac.revoked"),
            queues: format!("{p}celeriac.queues"),
        }
    }

    /// Returns the step a priority falls in: the largest step not above it
    /// (kombu's `_get_message_priority` and `_q_for_pri`).
    pub fn step_of(&self, priority: u8) -> u8 {
        let p = priority.min(9);
        self.steps
            .iter()
            .copied()
            .filter(|s| *s <= p)
            .max()
            .unwrap_or(0)
    }

    /// Returns the list key of a queue at a step.
    pub fn list(&self, queue: &str, step: u8) -> String {
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else {
            format!("{}{queue}{}{step}", self.prefix, self.sep)
        }
    }

    /// Returns the list key a message of `priority` goes to.
    pub fn list_for(&self, queue: &str, priority: u8) -> String {
        self.list(queue, self.step_of(priority))
    }

    /// Returns every list key of a queue, highest priority (step 0) first,
    /// the order kombu's `BRPOP` takes them in.
    pub fn lists(&self, queue: &str) -> Vec<String> {
        self.steps.iter().map(|s| self.list(queue, *s)).collect()
    }

    /// Returns the delayed set of a queue.
    pub fn delayed(&self, queue: &str) -> String {
        format!("{}celeriac.delayed.{queue}", self.prefix)
    }

    /// Returns the list a fetch waiting on a queue watches besides the
    /// queue's own lists: a delayed publish pushes to it.
    pub fn wake(&self, queue: &str) -> String {
        format!("{}celeriac.wake.{queue}", self.prefix)
    }

    /// Returns kombu's binding table of an exchange.
    pub fn binding(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// Returns kombu's permanent binding table of an exchange.
    pub fn binding_permanent(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// Returns the pattern matching every binding table (for `SCAN`).
    pub fn binding_pattern(&self) -> String {
        format!("{}_kombu.binding.*", glob_escape(&self.prefix))
    }

    /// Returns the queue a binding table key names, if it is one.
    pub fn queue_of_binding<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix("_kombu.binding.")
    }
}

/// Escapes glob characters for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(url: &str) -> Keys {
        Keys::new(&Config::from_url(url).unwrap())
    }

    #[test]
    fn kombu_layout() {
        let k = keys("redis://h/0");
        assert_eq!(k.list_for("celery", 0), "celery");
        assert_eq!(k.list_for("celery", 5), "celery\x06\x163");
        assert_eq!(k.list_for("emails", 9), "emails\x06\x169");
        assert_eq!(k.list_for("emails", 200), "emails\x06\x169");
        assert_eq!(
            k.lists("q"),
            vec!["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
        );
        assert_eq!(k.unacked, "unacked");
        assert_eq!(k.binding("celery"), "_kombu.binding.celery");
    }

    #[test]
    fn prefix_and_custom_steps() {
        let k = keys("redis://h/0?global_keyprefix=p*:&priority_steps=0,5&sep=::");
        assert_eq!(k.list_for("q", 7), "p*:q::5");
        assert_eq!(k.unacked_index, "p*:unacked_index");
        assert_eq!(k.binding_pattern(), "p\\*:_kombu.binding.*");
        assert_eq!(k.queue_of_binding("p*:_kombu.binding.q1"), Some("q1"));
        assert_eq!(k.steps_csv, "0,5");
    }
}
