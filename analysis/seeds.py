"""The report's random streams: one purpose number per resampling, each with its own generator
(analysis.resampling.rng_for(seed, purpose)), so adding a test never changes another test's draws."""

SEED_BOOT, SEED_PERM, SEED_STRAT, SEED_CNULL, SEED_CBOOT, SEED_CURVE, SEED_EFFECT, SEED_JOINT = range(1, 9)
SEED_STD, SEED_STRAT_Z, SEED_CURVE_PERM = range(9, 12)  # 9 is also analysis.taxonomy.SEED_TAXONOMY's (per condition)
SEED_SAMPLE = 12  # the streamed report's subsample of prompts for the prompt-count curve and the figures
SEED_PATCH, SEED_DLA, SEED_LENS = range(13, 16)  # the beyond-heads sections (analysis.beyond_heads), per condition
