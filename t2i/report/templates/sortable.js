// Click a header to sort its table by that column; click again to reverse. Empty cells sort last.
(function () {
  function sortKey(cell) {
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    const num = Number(raw);
    return raw === "" ? null : (Number.isNaN(num) ? raw.toLowerCase() : num);
  }

  function compare(a, b) {
    if (a === null || b === null) return (a === null) - (b === null);
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b));
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    const headers = Array.from(table.tHead.rows[0].cells);
    headers.forEach(function (th, col) {
      th.addEventListener("click", function () {
        const ascending = th.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows).map(function (row) { return [sortKey(row.cells[col]), row]; });
        rows.sort(function (x, y) {
          if (x[0] === null || y[0] === null) return compare(x[0], y[0]);
          return ascending ? compare(x[0], y[0]) : compare(y[0], x[0]);
        });
        rows.forEach(function (pair) { body.appendChild(pair[1]); });
      });
    });
    table.dataset.sortable = "ready";
  });
})();
