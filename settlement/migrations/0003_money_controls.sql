-- 0003_money_controls: withdrawal holds, idempotent refs, the admin audit trail.
--
-- 1. transfers.kind gains withdraw_hold (available -> locked of one account,
--    a requested withdrawal) and withdraw_release (locked -> available, a
--    rejected one); an approved withdrawal is a withdraw from the locked
--    bucket to account 0.  The CHECK lists engine.ledger.TRANSFER_KINDS.
-- 2. A non-empty ref is an idempotency key, enforced by partial unique
--    indexes that restate settlement.refs.REF_KEYS (a test checks that they
--    agree): the deposit namespace (the credited account) and the withdraw
--    namespace (the debited account: Withdraw and RequestWithdrawal, whose
--    withdraw_hold / withdraw / withdraw_release transfers share one ref).
--    An adjust's ref is its reason and is not a key.  A ref is at most
--    engine.core.REF_MAX (256) characters: a key fits a B-tree entry.
-- 3. audit_log becomes the one audit trail: besides the money rows of
--    adjustments (Adjusted) it holds an action row per admin act
--    (AdminAction): action, who, account, target, reason, before, after.
--
-- Ledgers written before this migration could reuse a ref (nothing refused
-- it then).  Such rows cannot be changed (the ledger is append-only), so each
-- index leaves out the later rows of a key already used -- named in the
-- index's predicate and its comment -- and keeps the first: a new transfer
-- reusing the key still collides with that one.

-- ------------------------------------------------------------------ 1. kinds
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check
    CHECK (kind IN ('lock', 'unlock', 'trade', 'fee', 'deposit', 'withdraw', 'adjust',
                    'withdraw_hold', 'withdraw_release'));

-- ------------------------------------------------------------------ 2. refs
DO $migration$
DECLARE
    spec      record;
    predicate text;
    exempt    bigint[];
BEGIN
    FOR spec IN SELECT * FROM (VALUES
        -- a deposit ref once per (credited account, asset)
        ('transfers_deposit_ref_key', 'target_account, asset_id, ref',
         $p$kind = 'deposit'$p$,
         'A non-empty deposit ref is used once per (account, asset).'),
        -- each withdrawal transfer kind once per (debited account, asset, ref)
        ('transfers_withdraw_ref_key', 'kind, source_account, asset_id, ref',
         $p$kind IN ('withdraw', 'withdraw_hold', 'withdraw_release')$p$,
         'A non-empty withdrawal ref is used once per (kind, account, asset).'),
        -- a withdrawal starts once: a hold, or a Withdraw straight from available
        ('transfers_withdrawal_start_ref_key', 'source_account, asset_id, ref',
         $p$(kind = 'withdraw_hold' OR (kind = 'withdraw' AND source_bucket = 'available'))$p$,
         'A withdrawal ref starts one withdrawal per (account, asset): one hold or one immediate withdraw.'),
        -- a hold ends once: approved (withdraw from locked) or rejected (release)
        ('transfers_withdrawal_end_ref_key', 'source_account, asset_id, ref',
         $p$(kind = 'withdraw_release' OR (kind = 'withdraw' AND source_bucket = 'locked'))$p$,
         'A held withdrawal ref ends once per (account, asset): approved or rejected, not both.')
    ) AS s(name, columns, covers, meaning)
    LOOP
        predicate := format('ref <> %L AND %s', '', spec.covers);
        EXECUTE format(
            'SELECT array_agg(id ORDER BY id) FROM ('
            '  SELECT id, row_number() OVER (PARTITION BY %s ORDER BY seq, event_index, id) AS n'
            '  FROM transfers WHERE %s) d WHERE n > 1', spec.columns, predicate)
        INTO exempt;
        IF exempt IS NOT NULL THEN
            RAISE WARNING '%: % transfers booked before this migration reuse a ref; they stay '
                          'in the ledger, outside the index', spec.name, cardinality(exempt);
            -- new rows have larger ids: the array is only read for old ones
            predicate := predicate || format(' AND (id > %s OR id <> ALL (%L::bigint[]))',
                                             exempt[cardinality(exempt)], exempt);
        END IF;
        EXECUTE format('CREATE UNIQUE INDEX %I ON transfers (%s) WHERE %s',
                       spec.name, spec.columns, predicate);
        EXECUTE format('COMMENT ON INDEX %I IS %L', spec.name, spec.meaning
            || CASE WHEN exempt IS NULL THEN ''
                    ELSE format(' Exempt (booked before 0003, reusing a ref): transfers.id %s.',
                                exempt) END);
    END LOOP;
END
$migration$;

-- ------------------------------------------------------------------ 3. audit_log
-- A money row (an Adjusted event: asset, amount, available before/after)
-- or an action row (an AdminAction event: those four NULL).  Rows from
-- before this migration are adjustments: action 'adjust'.
ALTER TABLE audit_log
    ADD COLUMN action        text   NOT NULL DEFAULT 'adjust',
    ADD COLUMN target        text   NOT NULL DEFAULT '',   -- a symbol, an asset, an order or withdrawal id
    ADD COLUMN before        text   NOT NULL DEFAULT '',   -- the state the act changed, as text
    ADD COLUMN after         text   NOT NULL DEFAULT '',
    ADD COLUMN adjustment_id bigint,                        -- a large adjustment's pending request
    ADD COLUMN approved_by   text   NOT NULL DEFAULT '',   -- ... and the second admin who released it
    ALTER COLUMN account_id       DROP NOT NULL,            -- NULL: the act names no account
    ALTER COLUMN asset_id         DROP NOT NULL,
    ALTER COLUMN amount           DROP NOT NULL,
    ALTER COLUMN available_before DROP NOT NULL,
    ALTER COLUMN available_after  DROP NOT NULL,
    -- an adjustment names who and why; an act may carry an empty reason
    DROP CONSTRAINT audit_log_admin_check,
    DROP CONSTRAINT audit_log_reason_check,
    ADD CONSTRAINT audit_log_action_check
        CHECK (action IN ('adjust', 'adjust_request', 'adjust_approve', 'halt', 'resume',
                          'freeze', 'unfreeze', 'set_tier', 'withdrawal_approve',
                          'withdrawal_reject', 'cancel_order', 'cancel_all')),
    ADD CONSTRAINT audit_log_money_whole
        CHECK (num_nulls(asset_id, amount, available_before, available_after) IN (0, 4)),
    ADD CONSTRAINT audit_log_money_is_adjustment
        CHECK (amount IS NULL OR (account_id IS NOT NULL AND admin <> '' AND reason <> ''
                                  AND action IN ('adjust', 'adjust_approve')));
-- audit_log_arithmetic (available_after = available_before + amount) stays: it
-- holds for every money row and is NULL (passes) for action rows.
ALTER TABLE audit_log ALTER COLUMN action DROP DEFAULT;     -- the writer always names it
CREATE INDEX audit_log_action_time ON audit_log (action, created_at);
COMMENT ON TABLE audit_log IS
    'The audit trail: every admin act (action, admin, account, target, reason, before, after) '
    'and every adjustment''s money (asset, amount, available before and after). Append-only.';

DROP VIEW audit_log_view;
CREATE VIEW audit_log_view AS
SELECT l.id, l.seq, l.event_index, l.action, l.admin, l.account_id, l.target, l.reason,
       l.before, l.after, a.name AS asset,
       minor_to_decimal(l.amount, a.scale) AS amount,
       minor_to_decimal(l.available_before, a.scale) AS available_before,
       minor_to_decimal(l.available_after, a.scale) AS available_after,
       l.adjustment_id, l.approved_by, l.created_at
FROM audit_log l LEFT JOIN assets a USING (asset_id);
