// A group's live values (console/live.py's Server-Sent Events): the table of the newest run's values, stale marking,
// and a uPlot trend per numeric key (the last 300 points). Loaded before Alpine starts (no defer): the group page's
// x-data="hubschedLive(url, periodS)" reads it.
window.hubschedLive = function (url, periodS) {
  const series = {}, charts = {};  // kept out of Alpine's reactive state: uPlot draws them
  return {
    rows: [], tick: null, stale: false, error: "",
    init() {
      const source = new EventSource(url);
      source.addEventListener("values", (e) => this.receive(JSON.parse(e.data)));
      source.addEventListener("error", (e) => { if (e.data) this.error = JSON.parse(e.data).message; });
      const staleAfter = Math.max(10, 3 * periodS) * 1000;
      setInterval(() => { this.stale = !!this.tick && Date.now() - Date.parse(this.tick) > staleAfter; }, 1000);
    },
    receive(data) {
      this.error = "";
      this.tick = data.tick;
      this.rows = data.values;
      const t = Date.parse(data.tick) / 1000;
      for (const row of data.values) {
        if (typeof row.value !== "number") continue;
        const name = (row.entity || "(script)") + " " + row.key;
        const s = series[name] || (series[name] = [[], []]);
        s[0].push(t); s[1].push(row.value);
        if (s[0].length > 300) { s[0].shift(); s[1].shift(); }
        if (charts[name]) { charts[name].setData(s); continue; }
        const box = document.createElement("figure");
        box.className = "trend"; box.dataset.key = name;
        const caption = document.createElement("figcaption");
        caption.textContent = name;
        box.appendChild(caption);
        this.$refs.trends.appendChild(box);
        charts[name] = new uPlot({ width: 320, height: 120, legend: { show: false },
                                   series: [{}, { label: name, stroke: "#0b5cad", width: 1.5 }] }, s, box);
      }
    },
  };
};
