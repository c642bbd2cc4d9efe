"""Replica renderer: Gaussian-splat faces bound to a facial rig, driven by speech, emotion and listening."""
