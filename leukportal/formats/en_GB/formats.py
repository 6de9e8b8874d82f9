# The portal's one way of writing dates and times (LANGUAGE_CODE en-gb), so that
# Django's own output (admin lists, {{ value }} in templates) matches
# diagnosis.formatting: local time of TIME_ZONE with the zone's name.
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
TIME_FORMAT = "H:i"
