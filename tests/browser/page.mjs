// Drives the status page of `t8k-engine serve` in Debian's headless Chromium, as a person would: a phone
// on the read-only server, then a desktop on the server with a token, clicking Build and watching the
// release. Prints one JSON object with what it saw; tests/web_page.rs judges it. Usage:
//   node page.mjs '{"ro": URL, "rw": URL, "token": T, "screenshot": PATH, "phoneShot": PATH}'
import { chromium } from "playwright-core";

const cfg = JSON.parse(process.argv[2]);
const out = { console_errors: [], steps_seen: [], delays: [] };
const deadline = (ms) => Date.now() + ms;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const watch = (page, label) => {
  page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(label + ": " + m.text()); });
  page.on("pageerror", (e) => out.console_errors.push(label + ": " + String(e)));
  // Which request a "Failed to load resource" error was about (the console message does not say).
  page.on("response", (r) => { if (r.status() >= 400) (out.http_errors ||= []).push(label + ": " + r.status() + " " + r.url()); });
};

try {
  // 1. A phone on the read-only server: the live release shows, and no action is offered.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const ro = await phone.newPage();
  watch(ro, "read-only");
  const t0 = Date.now();
  await ro.goto(cfg.ro);
  await ro.waitForSelector('[data-target="main"] .live-release code', { timeout: 15000 });
  out.load_ms = Date.now() - t0;
  out.navigation = await ro.evaluate(() => {
    const n = performance.getEntriesByType("navigation")[0];
    return { dom_content_loaded_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd };
  });
  out.ro_live = await ro.textContent('[data-target="main"] .live-release');
  await ro.waitForSelector('#releases li[data-state="live"]', { timeout: 15000 });
  out.ro_releases = await ro.textContent("#releases");
  out.ro_buttons = await ro.locator("button.action:visible").count();
  out.ro_target_buttons = await ro.locator(".target button").count();
  out.ro_cancel_visible = await ro.isVisible("#cancel");
  out.ro_width = await ro.evaluate(() => document.documentElement.scrollWidth);
  if (cfg.phoneShot) await ro.screenshot({ path: cfg.phoneShot, fullPage: true });

  // 2. A desktop on the server with a token: click Build, give the token, watch the release.
  const desk = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const rw = await desk.newPage();
  watch(rw, "with token");
  await rw.goto(cfg.rw);
  await rw.waitForSelector('[data-target="main"] button.action', { timeout: 15000 });
  await rw.waitForSelector("#live.on", { timeout: 15000 });
  await rw.evaluate(() => {
    window.__arrivals = [];
    new MutationObserver((records) => {
      const now = Date.now();
      for (const r of records) for (const n of r.addedNodes) {
        const m = /tick (\d{13})/.exec(n.textContent || "");
        if (m) window.__arrivals.push([Number(m[1]), now]);
      }
    }).observe(document.getElementById("log"), { childList: true });
  });
  await rw.click('[data-target="main"] button.action:has-text("Build")');
  await rw.fill("#token-input", cfg.token);
  await rw.click("#token-ok");
  await rw.waitForSelector("#running:not([hidden])", { timeout: 20000 });
  out.job_id = (await rw.textContent("#running-meta")).match(/job ([0-9A-Z]{26})/)[1];
  let shot = false;
  const seen = new Set();
  const until = deadline(60000);
  while (Date.now() < until) {
    const bars = await rw.$$eval("#running-timeline .bar", (els) =>
      els.map((e) => [e.dataset.step, e.dataset.ok, e.closest(".lane").dataset.lane]));
    for (const [step, ok, lane] of bars) {
      const key = step + "=" + ok;
      if (!seen.has(key)) { seen.add(key); out.steps_seen.push({ step, ok, lane, at: Date.now() }); }
    }
    const ticks = await rw.evaluate(() => window.__arrivals.length);
    if (!shot && ticks >= 45 && bars.some(([s, ok]) => s === "compile" && ok === "running")) {
      out.lanes_while_running = await rw.$$eval("#running-timeline .lane", (els) => els.map((e) => e.dataset.lane));
      if (cfg.screenshot) await rw.screenshot({ path: cfg.screenshot, fullPage: true });
      shot = true;
    }
    if (await rw.isHidden("#running")) break;
    await rw.waitForTimeout(50);
  }
  out.screenshot_taken = shot;
  out.delays = (await rw.evaluate(() => window.__arrivals)).map(([sent, got]) => got - sent);
  out.log_lines = await rw.locator("#log .line").count();
  // The new release shows as live (its backend commit is the job's id, shown short), and the history row
  // says who asked.
  await rw.waitForFunction((id) => document.querySelector('[data-target="main"] .live-release')?.textContent.includes(id),
    out.job_id.slice(0, 10), { timeout: 20000 });
  out.rw_live = await rw.textContent('[data-target="main"] .live-release');
  await rw.waitForSelector('#releases li[data-release="2"][data-state="live"]', { timeout: 20000 });
  out.rw_release_buttons = await rw.locator("#releases button.action").allTextContents();
  await rw.waitForSelector(`#history tr[data-job="${out.job_id}"]`, { timeout: 20000 });
  out.history_row = await rw.textContent(`#history tr[data-job="${out.job_id}"]`);

  // 3. The job page: the same timeline for the finished job, and its log.
  await rw.goto(cfg.rw + "#/job/" + out.job_id);
  await rw.waitForSelector("#job-timeline .bar", { timeout: 15000 });
  out.job_page = await rw.$$eval("#job-timeline .bar", (els) =>
    els.map((e) => [e.dataset.step, e.dataset.ok, e.closest(".lane").dataset.lane, e.textContent]));
  out.job_log_has_ticks = (await rw.textContent("#job-log")).includes("tick ");
} catch (e) {
  out.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
