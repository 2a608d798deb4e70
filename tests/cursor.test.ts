// Where claims start reading the queue (src/cursor.ts): the head and the pass over full hosts, moved on by what
// claims read, moved back by wake notifications, and back to the head after a while. No database: the queue's
// side is in delivery › per-host limits and worker › waking.

import { describe, expect, test } from "bun:test";
import { FROM_HEAD, QueueCursor } from "../src/cursor.ts";

/** A cursor whose points last 1,000 ms on a clock the test moves. */
function cursor() {
  const clock = { now: 0 };
  return { clock, cursor: new QueueCursor(() => 1000, () => clock.now) };
}

describe("QueueCursor", () => {
  test("claims of any host go on after the last row claimed; one that claimed nothing leaves it", () => {
    const { cursor: c } = cursor();
    const first = c.next([]);
    expect(first).toEqual(FROM_HEAD);
    c.advance(first, { rows: 200, after: "200" });
    const second = c.next([]);
    expect(second).toEqual({ after: "200", hosts: [] });
    c.advance(second, { rows: 0, after: null });
    expect(c.next([])).toEqual({ after: "200", hosts: [] });
  });

  test("a wake's id moves both points before it; a claim under way when it came cannot pass it", () => {
    const { cursor: c } = cursor();
    c.advance(c.next([]), { rows: 500, after: "500" });
    c.advance(c.next(["a"]), { rows: 900, after: "900" });
    c.lower("301");
    expect(c.next([]).after).toBe("300");
    expect(c.next(["a"]).after).toBe("300");
    // a claim that began before the wake came back with rows past it
    const read = c.next([]);
    c.lower("101");
    c.advance(read, { rows: 800, after: "800" });
    expect(c.next([]).after).toBe("100");
    // a wake for rows after the point changes nothing
    c.lower("5000");
    expect(c.next([]).after).toBe("100");
  });

  test("a payload that is not an id sends both points to the head", () => {
    for (const payload of ["", "not an id", "-5", "0", "12a", "99999999999999999999"]) {
      const { cursor: c } = cursor();
      c.advance(c.next([]), { rows: 10, after: "10" });
      c.advance(c.next(["a"]), { rows: 20, after: "20" });
      c.lower(payload);
      expect([payload, c.next([])]).toEqual([payload, FROM_HEAD]);
      expect([payload, c.next(["a"])]).toEqual([payload, { ...FROM_HEAD, hosts: ["a"] }]);
    }
  });

  test("the pass starts at the head's point, holds for the same hosts or more, and starts over for fewer", () => {
    const { cursor: c } = cursor();
    c.advance(c.next([]), { rows: 100, after: "100" });
    const pass = c.next(["a"]);
    expect(pass).toEqual({ after: "100", hosts: ["a"] });
    c.advance(pass, { rows: 10_000, after: "10100" });
    expect(c.next(["a", "b"]).after).toBe("10100");
    // a pass over a and b read on: a row before its point may be for b
    c.advance(c.next(["a", "b"]), { rows: 50, after: "10150" });
    expect(c.next(["a"]).after).toBe("100");
    // the pass does not move the head
    expect(c.next([]).after).toBe("100");
  });

  test("each point goes back to the head once it is older than its time; reset() sends both at once", () => {
    const { clock, cursor: c } = cursor();
    c.advance(c.next([]), { rows: 100, after: "100" });
    c.advance(c.next(["a"]), { rows: 100, after: "200" });
    clock.now = 999;
    expect(c.next([]).after).toBe("100");
    expect(c.next(["a"]).after).toBe("200");
    clock.now = 1000;
    expect(c.next([])).toEqual(FROM_HEAD);
    expect(c.next(["a"])).toEqual({ ...FROM_HEAD, hosts: ["a"] });
    c.advance(c.next([]), { rows: 5, after: "5" });
    c.reset();
    expect(c.next([])).toEqual(FROM_HEAD);
  });
});
