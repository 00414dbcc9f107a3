"""What a round leaves behind and how it is shown: run files, report data, figures, the HTML
report and Grad-CAM.
"""
