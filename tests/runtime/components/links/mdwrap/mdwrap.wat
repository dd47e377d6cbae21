;; astrid:mdwrap/wrap.wrap(text) = astrid:markdown/render.to-html(text), passed on.
(module
  (import "astrid:markdown/render@0.1.0" "to-html" (func $to_html (param i32 i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  ;; 768: the to-html result area, returned as this export's own result area.

  (func $realloc (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.xor (i32.sub (local.get $align) (i32.const 1)) (i32.const -1))))
    (local.set $end (i32.add (local.get $ptr) (local.get $new_size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (i32.const -1)
              (memory.grow
                (i32.div_u
                  (i32.add (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
                           (i32.const 65535))
                  (i32.const 65536))))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (if (local.get $old)
      (then (memory.copy (local.get $ptr) (local.get $old) (local.get $old_size))))
    (local.get $ptr))

  (func (export "astrid:mdwrap/wrap@0.1.0#wrap") (param $p i32) (param $l i32) (result i32)
    (call $to_html (local.get $p) (local.get $l) (i32.const 768))
    (i32.const 768))

  (func (export "cabi_post_astrid:mdwrap/wrap@0.1.0#wrap") (param i32)
    (global.set $heap (i32.const 65536)))
)
