/*
 * A throttle: a function run at most once every `intervalMs`, however often it is asked for.
 * Asks that come while a run waits are merged into it, so the function reads the newest state
 * when it runs (the last ask always gets a run after it: a trailing call). With `frame`, the run
 * happens in an animation frame, where the browser draws anyway.
 *
 * The live view asks on every event of a training run (tens a second); each DOM change costs the
 * browser a style, layout, paint and commit pass, on the cores the run trains on. Throttled, the
 * page draws a fixed number of frames a second whatever the run's speed.
 */
export class Throttle {
  constructor(run, intervalMs, { frame = true } = {}) {
    this.run = run;
    this.intervalMs = intervalMs;
    this.frame = frame;
    this.timer = null;
    this.lastRunAt = -Infinity;   // performance.now() of the last run
  }

  /* Ask for a run: now if the last one is old enough, else once the interval has passed. */
  schedule() {
    if (this.timer !== null) return;
    const wait = Math.max(0, this.lastRunAt + this.intervalMs - performance.now());
    const fire = () => {
      this.timer = null;
      this.lastRunAt = performance.now();
      this.run(this.lastRunAt);
    };
    this.timer = setTimeout(() => (this.frame ? requestAnimationFrame(fire) : fire()), wait);
  }

  get pending() {
    return this.timer !== null;
  }
}
