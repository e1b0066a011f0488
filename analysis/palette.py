"""The report's colours, without matplotlib (sections name them at import; they draw only when asked)."""

# Okabe & Ito's palette: distinguishable with every common colour-vision deficiency (and in greyscale by
# lightness for the two conditions)
OKABE_ITO = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442", "blue": "#0072B2",
             "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000", "grey": "#999999"}
COLOR_A, COLOR_B = OKABE_ITO["vermillion"], OKABE_ITO["blue"]
# the order categorical series take (matplotlib's prop cycle under analysis.figures.STYLE; the roles of fig9)
CYCLE = tuple(OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "yellow", "black"))
# diverging maps (RdBu_r) stay: red-blue is the diverging pair that every common colour-vision deficiency keeps
