// The landing page's upload form: POST the file to /predict and show the answer.
const form = document.getElementById("upload");
if (form) {
  const out = document.getElementById("result");
  for (const pre of document.querySelectorAll("pre")) {
    pre.textContent = pre.textContent.replaceAll("http://HOST", window.location.origin);
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const topK = data.get("top_k");
    data.delete("top_k");
    out.textContent = "...";
    try {
      const response = await fetch(`/predict?top_k=${encodeURIComponent(topK)}`, { method: "POST", body: data });
      const body = await response.json();
      if (!response.ok) {
        out.textContent = `${response.status} ${body.code}: ${body.error}`;
        return;
      }
      out.textContent = body.predictions
        .map((p) => `${p.label.padEnd(24)} ${(100 * p.score).toFixed(2)}%`)
        .join("\n");
    } catch (err) {
      out.textContent = `request failed: ${err}`;
    }
  });
}
