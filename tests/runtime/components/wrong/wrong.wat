;; A well-formed component of the wrong world: it exports `run` only.
(module
  (memory (export "memory") 1)
  (func (export "run")))
