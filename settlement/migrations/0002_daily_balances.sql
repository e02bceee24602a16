-- 0002_daily_balances: end-of-day balance snapshots (exchange snapshot-balances).
--
-- A day is a UTC calendar day of the ledger's own clock, transfers.created_at
-- (when settlement booked the transfer).  The snapshot of day D holds every
-- account's balances after the last transfer booked before D+1 00:00 UTC:
-- through_seq is that transfer's seq, and the balances are exactly those at
-- through_seq (a seq cut), so "snapshot + transfers with seq > through_seq"
-- is the balance at any later seq.  Written once per day, never changed.

CREATE TABLE daily_balance_snapshots (
    day         date   PRIMARY KEY,
    through_seq bigint NOT NULL CHECK (through_seq >= 0),
    taken_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE daily_balance_snapshots IS
    'One row per snapshotted UTC day: the seq the snapshot covers (balances after it).';

CREATE TABLE daily_balances (
    day        date    NOT NULL REFERENCES daily_balance_snapshots (day),
    account_id bigint  NOT NULL,
    asset_id   integer NOT NULL,
    available  bigint  NOT NULL,
    locked     bigint  NOT NULL,
    PRIMARY KEY (day, account_id, asset_id)
);
COMMENT ON TABLE daily_balances IS
    'End-of-day balances per (account, asset), minor units, as of daily_balance_snapshots.through_seq.';
CREATE INDEX daily_balances_account ON daily_balances (account_id, day);

CREATE TRIGGER daily_balance_snapshots_append_only BEFORE UPDATE OR DELETE ON daily_balance_snapshots
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER daily_balances_append_only BEFORE UPDATE OR DELETE ON daily_balances
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
