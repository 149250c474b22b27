"""`sae-bench report`: seed-style tables and figures from the results database."""
