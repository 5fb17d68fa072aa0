-- depends: 0075_approx_sketches
-- mode=approx: cold and archive sketches now live with their partitions as sketch files
-- (tiers/sketch_files.py); approx_sketches keeps warm's only and is pruned when a bucket leaves
-- warm (export_cold), at retention and on stream delete (tiers/sketch_store.py prune_*).
DELETE FROM approx_sketches WHERE tier <> 'warm';
CREATE INDEX IF NOT EXISTS approx_sketches_tier_bucket ON approx_sketches (tier, bucket);
