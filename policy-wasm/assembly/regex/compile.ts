// Compiles a syntax tree into a Program (Thompson construction). Counted repeats are expanded,
// equal rune lists are stored once, and the program is capped at MAX_INSTRUCTIONS so that a long
// group repeated 1000 times cannot exhaust memory. This module is browser compatible; it returns
// null instead of throwing.

import { Node, NODE_ALT, NODE_ASSERT, NODE_CLASS, NODE_CONCAT, NODE_REPEAT } from "./ast";
import { OP_ASSERT, OP_JMP, OP_MATCH, OP_RUNE, OP_SPLIT, Program } from "./program";

/** Largest program accepted, in instructions. */
export const MAX_INSTRUCTIONS: i32 = 65536;

/** Compiles `root`; null when the program would exceed MAX_INSTRUCTIONS. */
export function compileProgram(root: Node): Program | null {
  const roots = new Array<Node>(1);
  roots[0] = root;
  return compileProgramSet(roots);
}

/**
 * Compiles the alternation of `roots` into one program whose i-th branch ends in an OP_MATCH with
 * arg i, so that one pass over an input tells which of the patterns match (RE2::Set); null when
 * the program would exceed MAX_INSTRUCTIONS.
 */
export function compileProgramSet(roots: Array<Node>): Program | null {
  const c = new _Compiler();
  const last = roots.length - 1;
  for (let i = 0; i < last && !c.overflow; i++) {
    const split = c.push(OP_SPLIT, c.pc + 1, 0);
    c.emit(roots[i]);
    c.push(OP_MATCH, 0, i);
    c.arg[split] = c.pc;
  }
  c.emit(roots[last]);
  c.push(OP_MATCH, 0, last);
  if (c.overflow) return null;
  return new Program(c.op, c.out, c.arg, c.lists, c.ranges, c.hasAsserts);
}

class _Compiler {
  op: Array<i32> = new Array<i32>();
  out: Array<i32> = new Array<i32>();
  arg: Array<i32> = new Array<i32>();
  lists: Array<i32> = new Array<i32>();
  ranges: Array<i32> = new Array<i32>();
  interned: Map<u32, i32> = new Map<u32, i32>();
  hasAsserts: bool = false;
  overflow: bool = false;

  get pc(): i32 {
    return this.op.length;
  }

  push(op: i32, out: i32, arg: i32): i32 {
    const pc = this.op.length;
    if (pc >= MAX_INSTRUCTIONS) this.overflow = true;
    this.op.push(op);
    this.out.push(out);
    this.arg.push(arg);
    return pc;
  }

  emit(n: Node): void {
    if (this.overflow) return;
    const kind = n.kind;
    if (kind == NODE_CLASS) {
      this.push(OP_RUNE, this.pc + 1, this.listFor(n));
    } else if (kind == NODE_ASSERT) {
      this.hasAsserts = true;
      this.push(OP_ASSERT, this.pc + 1, n.assert);
    } else if (kind == NODE_CONCAT) {
      for (let i = 0; i < n.subs.length; i++) this.emit(n.subs[i]);
    } else if (kind == NODE_ALT) {
      this.emitAlt(n.subs);
    } else if (kind == NODE_REPEAT) {
      this.emitRepeat(n.subs[0], n.min, n.max);
    }
  }

  emitAlt(subs: Array<Node>): void {
    const jumps = new Array<i32>();
    const last = subs.length - 1;
    for (let i = 0; i < last && !this.overflow; i++) {
      const split = this.push(OP_SPLIT, this.pc + 1, 0);
      this.emit(subs[i]);
      jumps.push(this.push(OP_JMP, 0, 0));
      this.arg[split] = this.pc;
    }
    this.emit(subs[last]);
    for (let i = 0; i < jumps.length; i++) this.out[jumps[i]] = this.pc;
  }

  emitRepeat(sub: Node, min: i32, max: i32): void {
    if (max < 0 && min == 0) { // x*
      const loop = this.push(OP_SPLIT, this.pc + 1, 0);
      this.emit(sub);
      this.push(OP_JMP, loop, 0);
      this.arg[loop] = this.pc;
      return;
    }
    if (max < 0) { // x{min,}: min-1 copies, then x+
      for (let i = 0; i < min - 1 && !this.overflow; i++) this.emit(sub);
      const loop = this.pc;
      this.emit(sub);
      this.push(OP_SPLIT, loop, this.pc + 1);
      return;
    }
    for (let i = 0; i < min && !this.overflow; i++) this.emit(sub);
    const splits = new Array<i32>(); // x{min,max}: (x(x(x)?)?)?
    for (let i = min; i < max && !this.overflow; i++) {
      splits.push(this.push(OP_SPLIT, this.pc + 1, 0));
      this.emit(sub);
    }
    for (let i = 0; i < splits.length; i++) this.arg[splits[i]] = this.pc;
  }

  /** The id of the node's rune list, storing it once per distinct content. */
  listFor(n: Node): i32 {
    if (n.listId >= 0) return n.listId;
    const set = n.ranges!;
    const count = set.count();
    let h: u32 = 2166136261;
    for (let i = 0; i < count; i++) {
      h = (h ^ <u32> set.lo(i)) * 16777619;
      h = (h ^ <u32> set.hi(i)) * 16777619;
    }
    while (this.interned.has(h)) {
      const id = this.interned.get(h);
      if (this.sameList(id, n)) {
        n.listId = id;
        return id;
      }
      h++;
    }
    const id = this.lists.length >> 1;
    this.interned.set(h, id);
    this.lists.push(this.ranges.length >> 1);
    this.lists.push(count);
    for (let i = 0; i < count; i++) {
      this.ranges.push(set.lo(i));
      this.ranges.push(set.hi(i));
    }
    n.listId = id;
    return id;
  }

  sameList(id: i32, n: Node): bool {
    const set = n.ranges!;
    const count = set.count();
    if (this.lists[2 * id + 1] != count) return false;
    const base = this.lists[2 * id] * 2;
    for (let i = 0; i < count; i++) {
      if (this.ranges[base + 2 * i] != set.lo(i) || this.ranges[base + 2 * i + 1] != set.hi(i)) {
        return false;
      }
    }
    return true;
  }
}
