"""The decision pipeline, pure: a request document, its operation and canonical action, the
policies' verdict and its risk. No I/O and no event loop: the decider (airlock.decider) runs it,
`airlock check`, `explain` and `test` run it, and its tests call it directly."""
