//! OUTBOX_ACK: acknowledges outbox entries the store has applied, then trims the stream
//! of every acknowledged entry: below the oldest pending one, or, when none is pending,
//! up to and including the group's last delivered entry (every entry up to it was
//! delivered, and none is pending, so all are acknowledged; writers acknowledge their
//! batches in any order, so this may be newer than the entries acknowledged here). The
//! stream's length is therefore at least the number of entries not yet applied, and 0
//! only when all were.
//!
//! ```text
//! KEYS[1] -> taskq:{<queue>}:outbox
//! ARGV    -> consumer group, the newest id among the entries, then the entry ids
//! reply   -> how many entries were still pending
//! ```

use taskq_core::QueueName;

use super::{invocation, script};
use crate::keys::{OUTBOX_GROUP, QueueKeys};
use crate::{Broker, Result};

script!(
    r"
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
-- MINID keeps the floor itself: just above the newest acknowledged id, so that an empty
-- stream means every entry was applied (the submit check relies on it).
local function above(id)
  local ms, sq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. (tonumber(sq) + 1)
end
local floor = above(ARGV[2])
if p[1] > 0 then
  floor = p[2]
else
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, last
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
    end
    if name == ARGV[1] and last then floor = above(last) end
  end
end
redis.call('XTRIM', KEYS[1], 'MINID', floor)
return n
"
);

/// The newest of stream ids `<ms>-<seq>` (by number, not text).
fn newest<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let key = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    ids.into_iter().max_by_key(|id| key(id))
}

impl Broker {
    /// Acknowledges entries whose updates the store applied, and trims every acknowledged
    /// entry from the stream. Returns how many were still pending.
    pub async fn outbox_ack(&self, queue: &QueueName, ids: &[&str]) -> Result<u64> {
        let Some(last) = newest(ids.iter().copied()) else {
            return Ok(0);
        };
        let mut inv = invocation(&SCRIPT, &keys(&QueueKeys::new(queue)));
        inv.arg(OUTBOX_GROUP).arg(last);
        for id in ids {
            inv.arg(*id);
        }
        self.run(inv).await
    }
}

/// The KEYS of [`LUA`], in the order of the table above.
pub(crate) fn keys(k: &QueueKeys) -> [String; 1] {
    [k.outbox()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_compares_ids_as_numbers() {
        assert_eq!(newest(["9-5", "10-0", "10-1", "2-9"]), Some("10-1"));
        assert_eq!(newest([]), None);
    }
}
