"""The round's stages: train, infer, evaluate (rules and the judge), analyze (patterns and clusters), generate and
targeting, preference pairs, the reasoning mix; `loop` composes them into one round, `iterate` runs rounds until the
plateau, `measure` records the reference rounds (baseline, production, ceiling) and reruns, `sweep` compares settings.
"""
