"""Usage accounting: records per request, their cost, and where they are written."""
