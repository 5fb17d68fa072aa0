-- depends: 0093_import_ledger
-- Archive packs (tiers/archive_packs.py): consecutive small days of one stream archived as ONE
-- partition (period 'pack', start_ms = its first day, end_ms = the day after its last day), so an
-- object holds a useful amount. Retention deletes a pack whole, only when all of it is past
-- retention and no legal hold overlaps any of its days.

ALTER TABLE archive_partitions DROP CONSTRAINT IF EXISTS archive_partitions_period_check;
ALTER TABLE archive_partitions ADD CONSTRAINT archive_partitions_period_check
    CHECK (period IN ('day', 'week', 'month', 'pack'));
CREATE INDEX archive_partitions_packs ON archive_partitions (tenant, stream, start_ms) WHERE period = 'pack';
