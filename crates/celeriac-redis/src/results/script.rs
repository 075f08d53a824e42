//! The Lua that stores a result as Celery does (`celery-protocol.md` §6.3):
//! a `GET` guard that never overwrites a `SUCCESS`, then `SETEX` (or `SET`
//! without expiry) and `PUBLISH` of the same JSON on the channel named like
//! the key — in one script, so one round trip and atomic.
//!
//! The broker's settle script embeds [`STORE_RESULT_LUA`] to write a
//! result in the same step as the acknowledgement; see the module docs of
//! [`crate::results`] for the calling convention.

/// Lua defining `celeriac_store_result(key, payload, expiry_ms)`.
///
/// * `key`: the result key, which is also the Pub/Sub channel (pass it in
///   `KEYS`, so the script declares every key it touches);
/// * `payload`: the JSON from `encode_result`;
/// * `expiry_ms`: a number; `0` stores without expiry (`SET`), a whole
///   number of seconds uses `SETEX` as Python does, anything else `PSETEX`.
///
/// Returns `1` when it wrote and published, `0` when a `SUCCESS` was
/// already stored (nothing written, nothing published).
///
/// The guard reads the stored status with `cjson`; a value `cjson` cannot
/// read (a compressed 5.7 value, say) is checked by its first field, which
/// is `status` in what both Python and celeriac write.
pub(crate) const STORE_RESULT_LUA: &str = r#"
local function celeriac_result_is_success(raw)
  if not string.find(raw, '"SUCCESS"', 1, true) then
    return false
  end
  local ok, meta = pcall(cjson.decode, raw)
  if ok and type(meta) == 'table' then
    return meta['status'] == 'SUCCESS'
  end
  return string.find(raw, '^%s*{%s*"status"%s*:%s*"SUCCESS"') ~= nil
end

local function celeriac_store_result(key, payload, expiry_ms)
  local current = redis.call('GET', key)
  if current and celeriac_result_is_success(current) then
    return 0
  end
  if expiry_ms > 0 then
    if expiry_ms % 1000 == 0 then
      redis.call('SETEX', key, math.floor(expiry_ms / 1000), payload)
    else
      redis.call('PSETEX', key, expiry_ms, payload)
    end
  else
    redis.call('SET', key, payload)
  end
  redis.call('PUBLISH', key, payload)
  return 1
end
"#;

/// The standalone store script: `KEYS[1]` = result key, `ARGV[1]` = JSON,
/// `ARGV[2]` = expiry in milliseconds (`0`: none).
pub(crate) fn store_script() -> redis::Script {
    let mut src = String::with_capacity(STORE_RESULT_LUA.len() + 80);
    src.push_str(STORE_RESULT_LUA);
    src.push_str("return celeriac_store_result(KEYS[1], ARGV[1], tonumber(ARGV[2]))\n");
    redis::Script::new(&src)
}
