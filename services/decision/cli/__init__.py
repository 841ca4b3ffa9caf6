"""Command-line tools of the decision service: offline evaluation of its recommenders."""
