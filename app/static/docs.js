// Swagger UI over this server's own /openapi.json (a file, not inline: the page's CSP forbids inline scripts).
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
