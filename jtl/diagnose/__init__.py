"""Diagnostics, before training and after.

transferability.py  scores of frozen features: LogME, LEEP, NCE, H-score, ridge and k-NN probes
features.py         a model's features at every stage for a split
estimate.py         `jtl diagnose`: source x stage -> each score, with its seconds
recommend.py        `jtl recommend`: a strategy, cut depth and lr range from cheap signals
similarity.py       weight drift and linear CKA per stage
after.py            a finished run's drift, CKA and feature pictures (`jtl sweep --diagnose`)
"""
