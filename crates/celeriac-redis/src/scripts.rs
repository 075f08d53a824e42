//! The Lua scripts, loaded once per process and run with `EVALSHA` (the
//! `redis` crate loads a script again when a restarted server forgot it).
//!
//! Every script but `unlock` starts with `scripts/common.lua`: the key and
//! argument layout every script shares, the attempt tags and their fencing
//! check, the delivery counters; then the result store's
//! `celeriac_store_result`. [`invocation`] fills that shared layout.

use std::sync::OnceLock;

use redis::{Script, ScriptInvocation};

use crate::keys::Keys;

const COMMON: &str = include_str!("scripts/common.lua");

/// The scripts a broker runs.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub publish: Script,
    pub claim: Script,
    pub settle: Script,
    pub extend: Script,
    pub peek: Script,
    pub defer: Script,
    pub due: Script,
    pub restore: Script,
    pub unlock: Script,
    pub admin: Script,
}

fn with_common(body: &str) -> Script {
    let store = crate::results::script::STORE_RESULT_LUA;
    Script::new(&format!("{COMMON}\n{store}\n{body}"))
}

/// Returns the scripts, built once per process.
pub(crate) fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        publish: with_common(include_str!("scripts/publish.lua")),
        claim: with_common(include_str!("scripts/claim.lua")),
        settle: with_common(include_str!("scripts/settle.lua")),
        extend: with_common(include_str!("scripts/extend.lua")),
        peek: with_common(include_str!("scripts/peek.lua")),
        defer: with_common(include_str!("scripts/defer.lua")),
        due: with_common(include_str!("scripts/due.lua")),
        restore: with_common(include_str!("scripts/restore.lua")),
        unlock: Script::new(include_str!("scripts/unlock.lua")),
        admin: with_common(include_str!("scripts/admin.lua")),
    })
}

/// Returns an `EVALSHA` of `script` with the shared keys and arguments
/// filled in, for a pipeline (the caller appends the script's own
/// arguments; a server that lost the script answers `NOSCRIPT`).
pub(crate) fn command(script: &Script, keys: &Keys, visibility_timeout: f64) -> redis::Cmd {
    let shared = shared_keys(keys);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(shared.len())
        .arg(&shared[..])
        .arg(&shared_args(keys)[..])
        .arg(visibility_timeout);
    cmd
}

/// The keys every script takes (`scripts/common.lua`), in order.
fn shared_keys(keys: &Keys) -> [&str; 6] {
    [
        &keys.unacked,
        &keys.unacked_index,
        &keys.token_seq,
        &keys.dead,
        &keys.revoked,
        &keys.queues,
    ]
}

/// The arguments every script takes first, but the visibility timeout.
fn shared_args(keys: &Keys) -> [&str; 3] {
    [&keys.prefix, &keys.sep, &keys.steps_csv]
}

/// Returns an invocation of `script` with the shared keys and arguments
/// filled in (as [`command`] does); the caller appends the script's own
/// arguments.
pub(crate) fn invocation<'a>(
    script: &'a Script,
    keys: &Keys,
    visibility_timeout: f64,
) -> ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    inv.key(&shared_keys(keys)[..])
        .arg(&shared_args(keys)[..])
        .arg(visibility_timeout);
    inv
}
