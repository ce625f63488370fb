"""The learned router's research loop: per-token traces, their labels, and probe training (`cdw traces|probe`).

`traces.py` records every weak token a decode showed its policy; `labels.py` labels sampled positions (strong
disagreement or unit-test outcome); `train.py` fits a probe on the labels and writes its weights as JSON for the
`probe` policy family.
"""
