"""Tables, figures, the run summary and the paper's reference numbers."""
