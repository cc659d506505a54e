// /docs: Swagger UI from the swagger-ui-bundle package, served by this server (works offline).
"use strict";
window.addEventListener("load", function () {
  window.SwaggerUIBundle({ url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
