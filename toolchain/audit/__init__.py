"""Dataset-bias audit (``clip-debias audit``): Liu and He's dataset-classification test (ICLR 2025) on a CLIP's own
features -- can a linear classifier tell the sources apart from the image embedding, from each (layer, head) term
alone, from a built model's corrected embedding, and after low-level corruptions; with a pseudo-dataset control that
must stay at chance.

Modules: ``sources`` (what a SOURCE argument is, sampling), ``corruptions`` (lowres, blur, noise, jitter inside the
model's preprocessing), ``classify`` (splits, the standardized multinomial logistic regression, accuracies),
``files`` (``audit.json``), ``figures`` (heads.png, accuracy.png), ``run`` (the job).
"""
