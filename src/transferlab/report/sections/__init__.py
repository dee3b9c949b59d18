"""The report's sections, one module each: catalog_data (A and Data) · strategies (B, C, LP-FT) · comparison (D)
· test_analysis (E) with external (E's external sets) · methods."""
